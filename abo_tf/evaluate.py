"""Evaluates an exported model on a split of the records: `python -m abo_tf.evaluate`.

    python -m abo_tf.evaluate --model runs/resnet50 --records tfrecords/abo/1.0.0 \\
        --split test --report reports/resnet50-test

The SavedModel is what users ship, so that is what is measured: its
`serve_pixels` endpoint runs over the split through the evaluation input
pipeline (the central crop every model is evaluated on). Given the run folder
(not only its saved_model/), evaluate first checks the SavedModel against the
run's model.keras on the split, as training does (abo_tf.training.parity), and
prints the result. The report folder gets:

    metrics.json         accuracy, top-5, macro and weighted P/R/F1, the same per
                         frequency stratum (head/torso/tail by training examples), ECE;
                         95% intervals by a bootstrap over items (--bootstrap-samples)
    per_class.csv        support, precision, recall, F1, in_macro_average, training examples, stratum
    per_class_f1.png     a bar per class up to 40 classes, else F1 against training examples
    confusion_matrix.png the N most frequent classes plus "all others" (and .csv)
    confused_pairs.csv   every (true, predicted) pair of mistakes, most frequent first
    mistakes.csv         every mistake, most confident first; mistakes.png the top ones
    gradcam.png          Grad-CAM of correct and wrong predictions, from the run's model.keras
    reliability.png      reliability diagram (and calibration.csv)
    report.md            all of the above on one page

The library is `abo_tf.reports.evaluation`; metrics come from
`abo_tf.reports.metrics`, as for training and the baselines, so numbers compare
across models. Macro figures come first: ABO's classes are extremely long-tailed.
"""

import os
import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main
from abo_tf.reports import evaluation, metrics
from abo_tf.training import parity


@cli_main
def main(argv=None):
    evaluate_options, _ = options.parse(
        evaluation.EvaluateOptions, argv, prog="python -m abo_tf.evaluate", description=__doc__.split("\n\n")[0]
    )
    result = evaluation.evaluate(evaluate_options)
    if "parity" in result:
        print(parity.summary(result["parity"]))
    print(metrics.format_summary(result, evaluate_options.split))
    print(f"report: {os.path.join(evaluate_options.report, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
