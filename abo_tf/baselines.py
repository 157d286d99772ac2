"""Classical scikit-learn baselines on extracted features: `python -m abo_tf.baselines`.

    python -m abo_tf.baselines --records tfrecords/abo/1.0.0 --features handcrafted \\
        --model logreg linear_svm rbf_svm sgd --output runs/baselines
    python -m abo_tf.baselines --records tfrecords/abo/1.0.0 --features cnn --backbone resnet50 \\
        --weights imagenet --model logreg sgd --output runs/baselines --runs runs

The yardstick for the CNNs: if a logistic regression on colour histograms gets
close, the deep model does not earn its cost. Each `--model` is a Pipeline
(StandardScaler, optional PCA, classifier) with balanced class weights
against the long tail; its hyperparameters are chosen by macro-F1 on the
validation split (GRIDS: every candidate when the grid is small, successive
halving when it is large), then it is evaluated on test with the functions
`abo_tf.training.loop` uses, so the numbers compare with the CNN runs'.

Output folder:

    features/                      the feature cache (see abo_tf.features), unless --cache-dir
    <features>-<model>/            model.skops (the fitted pipeline), baseline.json (search,
                                   choice, timings, SHA-256 of model.skops), metrics.json
                                   ({"validation", "test"}), per_class.csv, confusion_matrix.png;
                                   handcrafted features also importance.csv, coefficients.csv
                                   (logreg) and interpretation.png
    comparison.md, comparison.csv  every baseline in this folder and every CNN run under --runs

Memory at full ABO size (~400k x 2048 float32 = 3.3 GB of CNN features):
features are memory-mapped from the cache, never loaded whole. `sgd` always
trains by `partial_fit` over chunks of CHUNK_ROWS rows (the scaler too), and
`logreg` / `linear_svm` switch to the same streamed SGD with their loss
(log / hinge, alpha = 1 / (C n)) when the training matrix is larger than
`--in-memory-gb` (their solvers copy the matrix, liblinear in float64).
`rbf_svm` trains on a stratified subsample of at most `--rbf-max-train`
examples: kernel SVMs cost O(n^2) memory and more time.

The library is abo_tf/classical/: classifiers.py, search.py, evaluation.py,
persistence.py, interpretation.py, baseline.py (one baseline end to end) and
comparison.py.
"""

import os
import sys

from abo_tf.classical.baseline import BaselineConfig, run_baselines
from abo_tf.common import options
from abo_tf.common.errors import cli_main


def _summary(record):
    test = record["metrics"]["test"]
    return (
        f"{os.path.basename(record['folder'])}: test accuracy {test['accuracy']:.3f}, macro F1 {test['macro_f1']:.3f}, "
        f"top-5 {test['top5_accuracy']:.3f}; chose {record['search']['chosen']} ({record['training_seconds']:.1f} s)"
    )


@cli_main
def main(argv=None):
    config, _ = options.parse(
        BaselineConfig, argv, prog="python -m abo_tf.baselines", description=__doc__.split("\n\n")[0]
    )
    results = run_baselines(config)
    for record in results["baselines"]:
        print(_summary(record))
    print()
    print(results["comparison"])
    print(f"comparison: {os.path.join(config.output, 'comparison.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
