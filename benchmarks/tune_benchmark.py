"""Benchmark: what a short search buys over the default config, what pruning saves, what the tuner costs.

    .venv/bin/python benchmarks/tune_benchmark.py [--listings 300] [--trials 8] [--epochs 4]

On a generated sample (`synthetic_abo`, built with every image of every listing),
around a config that is not at its ceiling (a small MobileNetV3 from scratch, 48 px,
few epochs; its [search] table is SPACE below):
1. Validation and test macro F1 of the default config (queued as trial 0) and of
   the best of `--trials` trials (random sampler, seed 0, median pruner).
2. Epochs run by the same trials without pruning (the random sampler draws the same
   values whatever the results) against with it: the epochs pruning saved.
3. The tuner's overhead per trial: a study of one trial (the default config: the
   study opened in a fresh journal, the trial trained through the pruning hook,
   told and written back) against `loop.train` of the same config outside the
   tuner (neither exports), in the same process, wall seconds, `--overhead-repeats` of each,
   interleaved after one untimed warm-up run; medians (the machine is shared,
   so read them with the load average printed beside them).
4. The default config's validation macro F1 over its three runs above: the noise of one trial's figure.
Prints the figures as JSON and writes them to benchmarks/results/tune.json.
"""

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from shared import results_path, write_results

from abo_tf.common import options  # noqa: E402

SPACE = {
    "fine_tune_learning_rate": {"low": 3e-4, "high": 3e-2, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "class_weights": {"choices": ["none", "sqrt", "balanced"]},
}


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    listings: int = options.option(300, help="listings of the generated sample", minimum=10)
    trials: int = options.option(8, help="trials of each study", minimum=1)
    epochs: int = options.option(4, help="epochs of each trial", minimum=1)
    image_size: int = options.option(48, help="pixels of the model input", minimum=32)
    overhead_repeats: int = options.option(3, help="timed one-trial studies and plain runs, each", minimum=1)
    overhead_only: bool = options.option(False, help="measure only the overhead (3.), updating tune.json")
    output: str = options.option("", help="folder kept for inspection ('' = a temporary one)", config=False)


def _build_sample(folder, listings):
    from abo_tf.records import build
    from abo_tf.testing import synthetic_abo

    synthetic_abo.generate_sample(os.path.join(folder, "abo"), num_listings=listings, seed=0, tar=False, max_side=128)
    abo = os.path.join(folder, "abo")
    build.build(
        build.BuildOptions(
            listings=abo,
            images=abo,
            output=os.path.join(folder, "records"),
            image_selection="all",
            min_examples_per_class=10,
            workers=2,
            progress=False,
        )
    )
    return os.path.join(folder, "records")


def _tune_options(records, output, bench, pruner, trials=None):
    from abo_tf.tuning import search

    return search.TuneOptions(
        records=records,
        output=output,
        model="mobilenet_v3_small",
        weights="none",
        image_size=bench.image_size,
        batch_size=16,
        epochs=bench.epochs,
        head_epochs=0,
        fine_tune_learning_rate=3e-3,
        trials=trials or bench.trials,
        sampler="random",
        pruner=pruner,
        seed=0,
        search=SPACE,
        progress=False,
    )


def _tune(records, output, bench, pruner, trials=None):
    from abo_tf.tuning import report, search

    tune_options = _tune_options(records, output, bench, pruner, trials)
    started = time.perf_counter()
    opened = search.open_search(tune_options)
    search.run_trials(opened, progress=False)
    tuned = time.perf_counter() - started
    report.write_all(opened)
    return opened, tuned


def _epochs(study):
    from abo_tf.tuning import trials

    return sum(trial.user_attrs.get(trials.EPOCHS, 0) for trial in study.trials)


def _plain_train_seconds(base_config, folder):
    """`loop.train` of the default config, outside the tuner (not exported either: a trial is not)."""
    import keras

    from abo_tf.training import loop

    config = dataclasses.replace(base_config, output=folder, progress=False)
    os.makedirs(folder)
    started = time.perf_counter()
    loop.train(config, export_model=False)
    seconds = time.perf_counter() - started
    keras.backend.clear_session()  # as after each trial: the next run starts from the same state
    return seconds


def _overhead(records, folder, bench, base_config):
    """Median wall seconds of a one-trial study and of a plain run of the same config, interleaved."""
    import statistics

    _plain_train_seconds(base_config, os.path.join(folder, "warm-up"))
    study, plain = [], []
    for repeat in range(bench.overhead_repeats):
        study.append(_tune(records, os.path.join(folder, f"one-trial-{repeat}"), bench, "median", trials=1)[1])
        plain.append(_plain_train_seconds(base_config, os.path.join(folder, f"plain-{repeat}")))
    return {
        "one_trial_study_seconds": statistics.median(study),
        "plain_train_seconds": statistics.median(plain),
        "fraction": statistics.median(study) / statistics.median(plain) - 1,
        "all_study_seconds": study,
        "all_plain_seconds": plain,
    }


def _default_config_runs(pruned, unpruned, plain_folder):
    """Validation macro F1 of the three runs of the default config (two trials 0, the plain run): training
    order is not deterministic (input_pipeline), so this is the noise a single trial's figure carries."""
    from abo_tf.training import run_folder
    from abo_tf.tuning import report

    values = [report.default_trial(opened.study).value for opened in (pruned, unpruned)]
    return values + [run_folder.load_metrics(plain_folder)["validation"]["macro_f1"]]


def main(argv=None):
    bench, _ = options.parse(BenchmarkOptions, argv, prog="tune_benchmark", description=__doc__.split("\n\n")[0])
    folder = bench.output or tempfile.mkdtemp(prefix="abo_tf_tune_bench_")
    try:
        return _measure(bench, folder)
    finally:
        if not bench.output:
            shutil.rmtree(folder, ignore_errors=True)


def _update_overhead(records, folder, bench):
    """Measures only the tuner's overhead and writes it into the existing tune.json."""
    from abo_tf.common import files
    from abo_tf.tuning import search

    base = search.base_train_config(_tune_options(records, os.path.join(folder, "base"), bench, "none"))
    results = files.read_json(results_path("tune.json"), "benchmark result", missing={})
    results["overhead"] = _overhead(records, os.path.join(folder, "overhead"), bench, base)
    results["overhead_load_average"] = os.getloadavg()
    print(json.dumps(results["overhead"], indent=2))
    write_results("tune.json", results)
    return 0


def _measure(bench, folder):
    from abo_tf.tuning import report

    records = _build_sample(folder, bench.listings)
    if bench.overhead_only:
        return _update_overhead(records, folder, bench)
    pruned, pruned_seconds = _tune(records, os.path.join(folder, "pruned"), bench, "median")
    unpruned, unpruned_seconds = _tune(records, os.path.join(folder, "unpruned"), bench, "none")
    _plain_train_seconds(unpruned.base_config, os.path.join(folder, "plain"))  # a third run: the noise
    rows = report.comparison_rows(pruned.study, pruned.options.output)
    results = {
        "setup": dataclasses.asdict(bench) | {"space": SPACE, "load_average": os.getloadavg()},
        "default_vs_best": [
            dict(zip(("config", "trial", "validation_macro_f1", "test_macro_f1", "test_accuracy"), row, strict=True))
            for row in rows
        ],
        "epochs": {"with_pruning": _epochs(pruned.study), "without_pruning": _epochs(unpruned.study)},
        "study_seconds": {"with_pruning": pruned_seconds, "without_pruning": unpruned_seconds},
        "overhead": _overhead(records, os.path.join(folder, "overhead"), bench, unpruned.base_config),
    }
    results["default_config_runs"] = _default_config_runs(pruned, unpruned, os.path.join(folder, "plain"))
    print(json.dumps(results, indent=2))
    write_results("tune.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
