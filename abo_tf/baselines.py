"""Classical scikit-learn baselines on extracted features: `python -m abo_tf.baselines`.

    python -m abo_tf.baselines --records tfrecords/abo/1.0.0 --features handcrafted \\
        --model logreg linear_svm rbf_svm sgd --output runs/baselines
    python -m abo_tf.baselines --records tfrecords/abo/1.0.0 --features cnn --backbone resnet50 \\
        --weights imagenet --model logreg sgd --output runs/baselines --runs runs

The yardstick for the CNNs: if a logistic regression on colour histograms gets
close, the deep model does not earn its cost. Each `--model` is a Pipeline
(normalisation, StandardScaler, optional PCA, optional kernel map, classifier)
with `--class-weights` (balanced by default; give the CNN run's) against the
long tail; its hyperparameters are chosen by macro-F1 on the validation split
with scikit-learn's search classes (GRIDS: GridSearchCV when the grid is small,
HalvingGridSearchCV when it is large, both on a PredefinedSplit and on at most
--search-max-train training rows), the two best are fitted again on a subsample
3 times larger and the better one is fitted on every training row, then it is
evaluated on test with the functions `abo_tf.training.loop` uses, so the
numbers compare with the CNN runs'.

Output folder:

    features/                      the feature cache (see abo_tf.features), unless --cache-dir
    <features>-<model>/            model.skops (the fitted pipeline), baseline.json (search,
                                   choice, timings, SHA-256 of model.skops), metrics.json
                                   ({"validation", "test"}, with 95% intervals), per_class.csv,
                                   test_predictions.csv, confusion_matrix.png, per_class_f1.png,
                                   report.md (the model, its choice, the search's table, the
                                   figures with their intervals); handcrafted features also
                                   importance.csv, coefficients.csv (logreg) and interpretation.png
    comparison.md, comparison.csv  every baseline in this folder and every CNN run under --runs,
                                   and each run minus each baseline (paired bootstrap by item);
                                   comparison.md links each baseline's report.md

Memory at full ABO size (~400k x 2048 float32 = 3.3 GB of CNN features):
features are memory-mapped from the cache, never loaded whole. `sgd`,
`linear_svm` (hinge loss by SGD) and, above --exact-kernel-max-classes
classes, `rbf_svm` (a Nystroem map, then hinge loss by SGD) train by
`partial_fit` over chunks of CHUNK_ROWS rows on every row, for at most
--sgd-epochs passes and fewer once they have seen a million examples
(scikit-learn's rule of thumb). `logreg` (lbfgs) and exact `rbf_svm` (SVC)
train in memory, on a stratified subsample when lbfgs would take more than
`--in-memory-gb` or SVC more than `--rbf-max-train` rows; each says so.
Handcrafted histograms get square roots before scaling (Hellinger,
`--no-hellinger`), CNN embeddings are L2-normalised. Timings on extracted
features: benchmarks/baselines_extracted_benchmark.py.

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
