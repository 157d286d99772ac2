"""The exponential moving average (EMA) of a model's state in training: its weights and its BatchNorm statistics.

Keras' `use_ema` averages the trainable weights only; BatchNormalization's moving mean and variance kept tracking
the raw weights, so the averaged weights were validated and exported with statistics of other weights (a MobileNetV3
trained from scratch then predicted about one class: README, recipe ablation). timm's `ModelEmaV2` averages the
whole state (parameters and buffers); so does this, with TensorFlow's warm-up of the momentum
(`tf.train.ExponentialMovingAverage(num_updates=...)`, TF Model Garden's `dynamic_decay`).
"""

import dataclasses

import keras
import tensorflow as tf

from abo_tf.training import models

# TF's warm-up: momentum min(m, (1 + n) / (10 + n)) after n updates. Counted from -1 here, so the first update of a
# phase copies the weights (as Keras' use_ema does): an average never reaches back before its phase began.
WARMUP_OFFSET = 9.0


@dataclasses.dataclass
class Averages:
    """The averages of one training phase's changing variables (`changing_variables`), created in the strategy scope.

    `averages` and `updates` go into the checkpoints for resuming (they restore bit for bit, like the optimizer's
    slots); a checkpoint restored without them has `updates` 0: the next update copies, and `swap` waits for it.
    """

    momentum: float
    variables: list  # the model's Keras variables averaged
    averages: list  # tf.Variables of the same shapes (mirrored under a distribution strategy)
    updates: tf.Variable  # int64: updates so far

    def update(self, strategy):
        """Moves every average towards its variable, in cross-replica context (after `strategy.run`), each replica's
        copy towards the same replica's variable.

        Args:
          strategy: the tf.distribute strategy the variables were created under.
        """
        earlier = tf.cast(self.updates, tf.float32)
        momentum = tf.minimum(tf.constant(self.momentum, tf.float32), earlier / (earlier + WARMUP_OFFSET))

        def move(average, value):
            return average.assign(momentum * average + (1.0 - momentum) * value)

        for variable, average in zip(self.variables, self.averages):
            strategy.extended.update(average, move, args=(variable.value,), group=False)
        self.updates.assign_add(1)

    def swap(self, strategy):
        """Exchanges the model's values with the averages, replica by replica: twice is the identity, bit for bit.

        Before the first update there is no average (the variables hold zeros), and nothing is exchanged: the model's
        values are their own average. A checkpoint restored without the averages (`expect_partial`) leaves 0 updates;
        resumed after its last step, such a run had exported the zeros as its model.
        """
        if int(self.updates.numpy()) == 0:
            return

        def exchange(variable, average):
            value = tf.identity(variable)
            variable.assign(average)
            return average.assign(value)

        for variable, average in zip(self.variables, self.averages):
            strategy.extended.update(variable.value, exchange, args=(average,), group=False)


def changing_variables(model):
    """The variables a training step changes as the model is now set (frozen or not): the trainable weights and the
    moving statistics of the trainable BatchNormalization layers (a frozen one runs in inference mode: Keras
    updates its statistics only when `training and self.trainable`)."""
    statistics = {}
    for layer in models.all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            statistics.update({id(variable): variable for variable in layer.non_trainable_variables})
    return list(model.trainable_variables) + list(statistics.values())


def make_averages(model, momentum):
    """`Averages` of `model`'s changing variables with `momentum` (call inside the strategy scope), or None at 0."""
    if momentum <= 0:
        return None
    variables = changing_variables(model)
    averages = [
        tf.Variable(tf.zeros(variable.shape, variable.value.dtype), trainable=False, name="average")
        for variable in variables
    ]
    return Averages(momentum, variables, averages, tf.Variable(0, dtype=tf.int64, trainable=False, name="updates"))
