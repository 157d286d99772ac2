"""Evaluates an exported model on a split of the records: `python -m abo_tf.evaluate`.

    python -m abo_tf.evaluate --model runs/resnet50/saved_model --records tfrecords/abo/1.0.0 \\
        --split test --report reports/resnet50-test

The SavedModel is what users ship, so that is what is measured: its
`serve_pixels` endpoint runs over the split through the evaluation input
pipeline (the central crop every model is evaluated on). The report folder gets:

    metrics.json         accuracy, top-5, macro and weighted P/R/F1, the same per
                         frequency stratum (head/torso/tail by training examples), ECE
    per_class.csv        support, precision, recall, F1, training examples, stratum
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

import argparse
import os
import sys

from abo_tf.reports import evaluation, metrics
from abo_tf.common.errors import cli_main


def _parser():
    parser = argparse.ArgumentParser(prog="python -m abo_tf.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--model", required=True, help="a run's saved_model folder (from abo_tf.train)")
    inputs.add_argument("--records", required=True, help="folder of a build_records output")
    inputs.add_argument("--split", default="test", help="split to evaluate")
    inputs.add_argument("--keras-model", help="the run's model.keras for Grad-CAM; default: next to --model")
    report = parser.add_argument_group("report")
    report.add_argument("--report", required=True, help="folder for report.md, metrics.json, CSVs and figures")
    report.add_argument("--top-n", type=int, default=20, help="classes in the confusion matrix (plus 'all others')")
    report.add_argument("--gallery-size", type=int, default=16, help="most confident mistakes shown")
    report.add_argument("--gradcam-examples", type=int, default=4, help="correct predictions explained, and as many wrong ones")
    report.add_argument("--calibration-bins", type=int, default=metrics.CALIBRATION_BINS, help="equal-width confidence bins of the ECE and the reliability diagram")
    strata = parser.add_argument_group("frequency strata (training examples per class)")
    strata.add_argument("--head-min", type=int, default=metrics.HEAD_MIN, help="head: at least this many")
    strata.add_argument("--tail-below", type=int, default=metrics.TAIL_BELOW, help="tail: fewer than this many")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--batch-size", type=int, default=64, help="images per call of the SavedModel")
    runtime.add_argument("--seed", type=int, default=0, help="draws the Grad-CAM examples")
    runtime.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    options = evaluation.EvaluateOptions(
        model=args.model, records=args.records, report=args.report, split=args.split, keras_model=args.keras_model,
        batch_size=args.batch_size, top_n=args.top_n, head_min=args.head_min, tail_below=args.tail_below,
        calibration_bins=args.calibration_bins, gallery_size=args.gallery_size, gradcam_examples=args.gradcam_examples,
        seed=args.seed, progress=args.progress,
    )
    result = evaluation.evaluate(options)
    print(metrics.format_summary(result, options.split))
    print(f"report: {os.path.join(options.report, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
