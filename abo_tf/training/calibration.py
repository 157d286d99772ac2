"""Temperature scaling (Guo et al., ICML 2017): one scalar T fitted on validation, folded into the classifier's logits.

    probabilities = softmax(logits / T)

T minimises the validation negative log-likelihood; it leaves every argmax (so
accuracy and F1) unchanged. Folded into the last Dense layer (kernel and bias
divided by T), it travels inside model.keras and the SavedModel: the served
`probabilities` are the calibrated ones, with no extra op to forget.
"""

import numpy as np
import scipy.optimize
import scipy.special

from abo_tf.reports import metrics

# log T is searched in [log 0.05, log 20]: beyond, the model is constant or one-hot and T explains nothing.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
LOGITS_LAYER = "logits"  # models.build_model's last layer


def negative_log_likelihood(logits, labels, temperature=1.0):
    """Mean -log p(true class) of softmax(logits / T), computed in float64."""
    log_probabilities = scipy.special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-np.mean(log_probabilities[np.arange(len(labels)), np.asarray(labels)]))


def fit_temperature(logits, labels):
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] of least NLL on (logits, labels); 1.0 without examples."""
    if len(labels) == 0:
        return 1.0
    result = scipy.optimize.minimize_scalar(
        lambda log_temperature: negative_log_likelihood(logits, labels, np.exp(log_temperature)),
        bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def calibration_record(logits, labels, temperature):
    """NLL and ECE of the logits before and after the temperature (what metrics.json reports)."""
    before = scipy.special.softmax(np.asarray(logits, np.float64), axis=1)
    after = scipy.special.softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return {
        "temperature": temperature,
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
        "ece_before": metrics.expected_calibration_error(labels, before),
        "ece_after": metrics.expected_calibration_error(labels, after),
    }


def _logits_of(probabilities, temperature):
    """Logits (up to a constant per row, which softmax ignores) behind probabilities calibrated at T: T x log p."""
    return temperature * np.log(np.maximum(np.asarray(probabilities, np.float64), np.finfo(np.float64).tiny))


def uncalibrated_probabilities(probabilities, temperature):
    """The probabilities before temperature T of probabilities an export served."""
    return scipy.special.softmax(_logits_of(probabilities, temperature), axis=1)


def uncalibrated_record(probabilities, labels, temperature):
    """`calibration_record` of an export's (calibrated) probabilities."""
    return calibration_record(_logits_of(probabilities, temperature), labels, temperature)


def fold_temperature(model, temperature):
    """Divides the last Dense layer's kernel and bias by T: the model's logits become logits / T (in place)."""
    layer = model.get_layer(LOGITS_LAYER)
    layer.set_weights([weight / np.float32(temperature) for weight in layer.get_weights()])
