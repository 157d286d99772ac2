"""Benchmark: the training recipe of issue 19, part by part, against the old one, on three datasets.

    .venv/bin/python benchmarks/recipe_ablation.py [--seeds 3] [--epochs 4] [--steps-per-epoch 15] [--image-size 32]
        [--work-dir DIR] [--only-seed N] [--collect] [--variants ... class_balanced sqrt_sampling]

Every run trains the same small MobileNetV3 from scratch (pipelines/demo.toml's schedule at `--image-size`,
`--epochs` of `--steps-per-epoch`, `--deterministic`, class weights off) with `loop.train_weights`: the train
command's set-up, loop and checkpoints, without the export and its parity check. The old recipe (before issue 19):
AdamW decay 1e-4 on every weight, crop area floor 0.08, no EMA, no augmentation, plain cross-entropy, the last
epoch kept, no temperature. Each variant changes one part (PARTS) to the new recipe; "all" changes every part.
`--keep best` and the temperature are not trained again (DERIVED): they are the old run's best epoch and its
logits at the temperature fitted on validation, as the flags would give (training is deterministic, so a run with
the flag trains the same weights). Figures: the kept model's validation and test macro F1, NLL and ECE (15 bins),
mean and sample standard deviation over the seeds. Datasets, each written in the
ABO layout and built with `build_records` (`--image-selection all`):
  demo:        `python -m abo_tf.sample --listings 800 --seed 0`, as `make demo` builds it (13 types);
  close_types: 40 generated types, 4 per shape differing only by 10 degrees of hue, long-tailed 80 -> 4 items
               (abo_tf.testing.labelled_download.close_types);
  digits:      scikit-learn's 1,797 real 8x8 scans of handwritten digits, upscaled (10 classes).
Each finished run leaves its figures in its folder (a cut ablation resumes; `--collect` summarises what finished
without training). Writes benchmarks/results/recipe_ablation.json (with the machine and its load) after each
dataset; `python benchmarks/readme.py` renders it into README.md. At 48 px, 3 epochs of a pass over train, a run
is about 40 CPU s; on 2 cores at load 7-25 (nice 10) it took 1-14 min.
"""

import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from shared import REPO, results_path, write_results

from abo_tf.common import options  # noqa: E402

RESULTS = "recipe_ablation.json"
RUN_RECORD = "ablation.json"  # in each run folder: its figures, so a cut ablation resumes or is summarised
DATASETS = ("demo", "close_types", "digits")
# The old recipe, as `abo_tf.train` ran before issue 19.
OLD = {
    "weight_decay": 1e-4,
    "decay_norm_and_bias": True,
    "crop_area_min": 0.08,
    "ema_momentum": 0.0,
    "randaugment": False,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "loss": "cross_entropy",
    "keep": "last",
    "calibrate": False,
}
# Each part as the new recipe sets it (the parts; the crop floor belongs to augmentation there).
PARTS = {
    "weight_decay": {"weight_decay": 0.05, "decay_norm_and_bias": False},
    "augmentation": {"crop_area_min": 0.25, "randaugment": True, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    "ema": {"ema_momentum": 0.99},
    "logit_adjusted": {"loss": "logit_adjusted"},
    "keep_best": {"keep": "best"},
    "calibrate": {"calibrate": True},
}
# Long-tail options that are not defaults, measured beside the parts: alternatives to logit adjustment, so not in "all".
EXTRAS = {
    "balanced_softmax": {"loss": "balanced_softmax"},
    "class_balanced": {"sampling": "class_balanced"},
    "sqrt_sampling": {"sampling": "sqrt"},
}
# Not trained again: the old run's best epoch (its best checkpoint is written anyway) and its logits with the
# temperature fitted on validation. Training is deterministic, so a run with the flag would train the same.
DERIVED = ("keep_best", "calibrate")
VARIANTS = ("old", *PARTS, "all", *EXTRAS)


@dataclasses.dataclass(frozen=True)
class AblationOptions:
    seeds: int = options.option(3, help="seeds per variant: 0, 1, ...", minimum=1, maximum=10)
    only_seed: int | None = options.option(help="run only this seed (several processes share the seeds)", minimum=0)
    epochs: int = options.option(4, help="epochs of every run", minimum=1, maximum=100)
    image_size: int = options.option(32, help="pixels of the model input", minimum=32, maximum=224)
    steps_per_epoch: int = options.option(15, help="steps of 32 images an epoch (0 = a pass over train)", minimum=0)
    datasets: tuple[str, ...] = options.option(DATASETS, help="datasets to run", choices=DATASETS)
    variants: tuple[str, ...] = options.option(
        tuple(name for name in VARIANTS if name != "sqrt_sampling"), help="variants to run", choices=VARIANTS
    )
    work_dir: str = options.option("/tmp/recipe_ablation", help="datasets and run folders (reused)", config=False)
    collect: bool = options.option(
        False, help="train nothing: summarise the runs already finished in --work-dir (a cut ablation)", config=False
    )


def variant_overrides(variant):
    """The TrainConfig values of a variant (old recipe + the part, or every part for "all")."""
    if variant == "old":
        return {**OLD, "keep": "best"}  # the best checkpoint for DERIVED; the old figures are the last epoch's
    if variant == "all":
        return {**OLD, **{key: value for part in PARTS.values() for key, value in part.items()}}
    return {**OLD, **{**PARTS, **EXTRAS}[variant]}


# --- datasets ------------------------------------------------------------------


def _build(abo_dir, records_dir, min_examples):
    from abo_tf.records import build

    build.build(
        build.BuildOptions(
            listings=abo_dir,
            images=abo_dir,
            output=records_dir,
            image_selection="all",
            min_examples_per_class=min_examples,
            workers=2,
            progress=False,
        )
    )


def prepare(dataset, work_dir):
    """The records folder of `dataset` under `work_dir`, written and built unless already there."""
    from abo_tf.testing import labelled_download, synthetic_abo

    folder = os.path.join(work_dir, dataset)
    records = os.path.join(folder, "records")
    if os.path.isfile(os.path.join(records, "manifest.json")):
        return records
    abo = os.path.join(folder, "abo")
    if dataset == "demo":  # as `make demo` builds it
        synthetic_abo.generate_sample(abo, num_listings=800, seed=0)
        _build(abo, records, 20)
    else:
        items = labelled_download.close_types() if dataset == "close_types" else labelled_download.digits()
        labelled_download.write_download(abo, items)
        _build(abo, records, 4)
    return records


# --- runs ------------------------------------------------------------------------


def _train_config(records, output, seed, args, overrides):
    from abo_tf.common import config as config_lib
    from abo_tf.training import loop

    demo = config_lib.load_toml(os.path.join(REPO, "pipelines", "demo.toml"))
    values = {key: value for key, value in demo.items() if key not in config_lib.WHOLE_TABLES}
    values.update(image_size=args.image_size, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    values.update(class_weights="none", deterministic=True)
    values.update(overrides)
    return loop.TrainConfig(records=records, output=output, seed=seed, progress=False, **values)


def _figures(labels, logits, temperature=1.0):
    import numpy as np
    import scipy.special

    from abo_tf.reports import metrics
    from abo_tf.training import calibration

    probabilities = scipy.special.softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return {
        "macro_f1": metrics.classification_metrics(labels, probabilities.argmax(1))["macro_f1"],
        "nll": calibration.negative_log_likelihood(logits, labels, temperature),
        "ece": metrics.expected_calibration_error(labels, probabilities),
    }


def _split_logits(run):
    """{split: (labels, logits)} of `run.model` on validation and test."""
    from abo_tf.records import shards
    from abo_tf.training import loop

    manifest = shards.read_manifest(run.config.records)
    return {
        split: loop.predict_split(run.model, run.config, split, manifest, logits=True)[:2]
        for split in ("validation", "test")
    }


def _split_figures(logits, calibrate):
    """({split: figures}, temperature): at T = 1, or with `calibrate` at --calibrate's T (least validation NLL)."""
    from abo_tf.training import calibration

    temperature = calibration.fit_temperature(logits["validation"][1], logits["validation"][0]) if calibrate else 1.0
    return {split: _figures(*pair, temperature) for split, pair in logits.items()}, temperature


def finished_run(output):
    """The record a finished run left in its folder, or None."""
    try:
        with open(os.path.join(output, RUN_RECORD), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def run_one(records, output, seed, args, variant):
    """Trains one variant (unless its folder holds the figures already): {"figures": {split: figures}, "seconds",
    "temperature", "kept_epoch"}; the old run also has the DERIVED variants' figures under their names."""
    import shutil

    import keras

    from abo_tf.common import files
    from abo_tf.training import loop

    finished = finished_run(output)
    if finished is not None:
        return finished
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    keras.backend.clear_session()
    config = _train_config(records, output, seed, args, variant_overrides(variant))
    started = time.perf_counter()
    run, history = loop.train_weights(config)
    # The 1-minute load as the run ends: the machine is shared, so a run's seconds depend on it.
    record = {"seconds": time.perf_counter() - started, "epochs_run": len(history), "load_average": os.getloadavg()[0]}
    if variant == "old":  # the last epoch's weights as they are, then calibrated; then the best epoch's
        last = _split_logits(run)
        record["figures"], _ = _split_figures(last, calibrate=False)
        record["calibrate"], record["temperature"] = _split_figures(last, calibrate=True)
    kept = loop.keep_weights(run, history)
    figures, temperature = _split_figures(_split_logits(run), config.calibrate)
    if variant == "old":
        record["keep_best"] = figures
    else:
        record["figures"], record["temperature"] = figures, temperature
    record["kept_epoch"] = None if kept is None else kept["epoch"]
    files.write_json(os.path.join(output, RUN_RECORD), record)
    return record


def _summary(values):
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs):
    """{variant: {split: {figure: {mean, sd}}}} from {variant: [run record per seed]}."""
    table = {}
    for variant, records in runs.items():
        key = variant if variant in DERIVED else "figures"
        table[variant] = {"seeds": len(records)}
        table[variant].update(
            {
                split: {
                    figure: _summary([record[key][split][figure] for record in records])
                    for figure in records[0][key][split]
                }
                for split in records[0][key]
            }
        )
        if variant not in DERIVED:
            table[variant]["seconds"] = _summary([record["seconds"] for record in records])
    return table


def run_order(variants, seeds):
    """(seed, variant) pairs: the old recipe's (and DERIVED's) seeds first, then every other variant seed by seed.

    The old recipe's spread over seeds is what every row is read against, so an ablation cut short still has it.
    """
    baseline = [variant for variant in variants if variant == "old" or variant in DERIVED]
    return [(seed, variant) for seed in seeds for variant in baseline] + [
        (seed, variant) for seed in seeds for variant in variants if variant not in baseline
    ]


def run_dataset(dataset, args):
    """Every variant x seed on `dataset`: its results entry (classes, examples, variants, machine)."""
    from abo_tf.records import shards
    from abo_tf.testing import measure

    records = prepare(dataset, args.work_dir)
    manifest = shards.read_manifest(records)
    runs = {}
    for seed, variant in run_order(args.variants, range(args.seeds) if args.only_seed is None else [args.only_seed]):
        trained = "old" if variant in DERIVED else variant
        output = os.path.join(args.work_dir, dataset, "runs", f"{trained}-{seed}")
        record = finished_run(output) if args.collect else run_one(records, output, seed, args, trained)
        if record is None:
            continue
        runs.setdefault(variant, []).append(record)
        shown = record[variant if variant in DERIVED else "figures"]["validation"]
        print(f"{dataset} seed {seed} {variant} ({record['seconds']:.0f} s): {json.dumps(shown)}", flush=True)
    loads = [record["load_average"] for records in runs.values() for record in records if "load_average" in record]
    return {
        "classes": len(manifest["classes"]),
        "run_load_average": [min(loads), max(loads)] if loads else None,
        "examples": {split: entry["num_examples"] for split, entry in manifest["splits"].items()},
        "variants": summarise(runs),
        "machine": measure.machine(),
    }


def _merged_write(update):
    """Applies `update(results)` to the results file under a lock (one process per dataset may run at once)."""
    import fcntl

    os.makedirs(os.path.dirname(results_path(RESULTS)), exist_ok=True)
    with open(os.path.join(tempfile.gettempdir(), "recipe_ablation.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(results_path(RESULTS), encoding="utf-8") as handle:
                results = json.load(handle)
        except FileNotFoundError:
            results = {"datasets": {}}
        update(results)
        write_results(RESULTS, results)
    return results


def _record_dataset(settings, dataset, entry, results):
    results.update(settings, datasets={**results.get("datasets", {}), dataset: entry})


def main(argv=None):
    import tensorflow as tf

    # One thread per op: on a shared, oversubscribed machine a pool per process mostly waits for its turn.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    args, _ = options.parse(AblationOptions, argv, prog="recipe_ablation.py", description=__doc__.split("\n\n")[0])
    settings = {
        "seeds": args.seeds,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": 32,
        "image_size": args.image_size,
        "model": "mobilenet_v3_small",
        "old": OLD,
        "parts": PARTS,
        "extras": EXTRAS,
    }
    for dataset in args.datasets:
        started = time.perf_counter()
        entry = run_dataset(dataset, args)
        entry["wall_seconds"] = time.perf_counter() - started
        results = _merged_write(functools.partial(_record_dataset, settings, dataset, entry))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
