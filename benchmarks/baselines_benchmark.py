"""Benchmark: CNN features through the pipeline vs `predict` on decoded images; baseline training cost vs size.

    .venv/bin/python benchmarks/baselines_benchmark.py [--listings 300] [--backbone mobilenet_v3_small] [--repeats 3]

1. Feature extraction, images/s: `extraction.extract_features` (records ->
   evaluation input pipeline -> traced backbone -> memory-mapped cache) on the
   train split of a generated sample vs the same feature model's
   `keras.Model.predict` on a NumPy array of the same images, already decoded
   and cropped (no JPEG decoding, no writing); and, to split the difference,
   the traced function extract_features calls, fed the same NumPy batches. Random weights (`--weights
   none`): speed does not depend on them. The model build and trace are left
   out of both; each extraction writes into a fresh cache folder.
2. Baseline training time vs the number of training examples: one fit per
   model with a fixed hyperparameter from the middle of its grid (the path
   `search.search` takes for its final fit: a Pipeline in memory, or
   streamed SGD for `sgd`), on synthetic CNN-like features: Gaussian classes
   with random means, long-tailed class sizes, `--dimension` columns.
Medians of `--repeats`. Prints Markdown tables and writes benchmarks/results/baselines.json.
About 8-12 minutes on 2 cores with the defaults.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

from shared import write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SIZE = 224
BATCH = 64
# One candidate per model, from the middle of search.GRIDS.
FIXED_PARAMS = {
    "logreg": {"classifier__C": 1.0},
    "linear_svm": {"classifier__alpha": 1e-4},
    "rbf_svm": {"classifier__C": 10.0},
    "sgd": {"classifier__loss": "hinge", "classifier__alpha": 1e-4},
}


def make_records(work_dir, listings):
    """A generated sample's records (every image of every listing)."""
    from abo_tf.records import shards
    from abo_tf.testing import synthetic_abo as sample

    records = sample.sample_records(work_dir, listings, max_side=256)
    return records, shards.read_manifest(records)


def pipeline_rate(records, spec, work_dir):
    """Images/s of extract_features on the train split (fresh cache), as its info.json records it."""
    from abo_tf.classical import extraction

    cache_dir = os.path.join(work_dir, "cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    result = extraction.extract_features(records, spec, ("train",), cache_dir, batch_size=BATCH, progress=False)
    return result["train"].info["images_per_second"]


def decoded_images(records, manifest):
    """The train split's images as the evaluation pipeline crops them: uint8 [N, S, S, 3]."""
    import numpy as np

    from abo_tf.training import input_pipeline

    dataset = input_pipeline.make_dataset(records, "train", IMAGE_SIZE, BATCH, training=False, manifest=manifest)
    return np.concatenate([batch["image"].numpy() for batch in dataset])


def traced_rate(embed, images):
    """Images/s of the traced feature function extract_features uses, on NumPy batches."""
    started = time.perf_counter()
    for start in range(0, len(images), BATCH):
        embed(images[start : start + BATCH]).numpy()
    return len(images) / (time.perf_counter() - started)


def extraction_figures(records, manifest, backbone, work_dir, repeats):
    from abo_tf.classical import extraction, feature_spec

    wanted = feature_spec.FeatureSpec(kind=feature_spec.CNN, backbone=backbone, weights="none", image_size=IMAGE_SIZE)
    spec = feature_spec.resolve_spec(wanted)
    images = decoded_images(records, manifest)
    model = extraction.build_feature_model(spec)
    model.predict(images[:BATCH], batch_size=BATCH, verbose=0)  # builds and traces the predict function
    embed = extraction.make_embed(spec)  # built and traced once, as in extract_features
    predict_rates, pipeline_rates, traced_rates = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(images, batch_size=BATCH, verbose=0)
        predict_rates.append(len(images) / (time.perf_counter() - started))
        pipeline_rates.append(pipeline_rate(records, spec, work_dir))
        traced_rates.append(traced_rate(embed, images))
        print(
            f"  pipeline {pipeline_rates[-1]:.1f} img/s, predict on decoded arrays {predict_rates[-1]:.1f} img/s, "
            f"traced function on decoded arrays {traced_rates[-1]:.1f} img/s",
            flush=True,
        )
    pipeline, predict, traced = (
        statistics.median(pipeline_rates),
        statistics.median(predict_rates),
        statistics.median(traced_rates),
    )
    return {
        "traced_images_per_second": traced,
        "pipeline_vs_traced": pipeline / traced,
        "all_traced": traced_rates,
        "backbone": backbone,
        "weights": "none",
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH,
        "images": int(len(images)),
        "pipeline_images_per_second": pipeline,
        "predict_images_per_second": predict,
        "ratio": pipeline / predict,
        "all_pipeline": pipeline_rates,
        "all_predict": predict_rates,
    }


def training_figures(sizes, dimension, num_classes, repeats, models):
    """Seconds of one fit per model and size, and the validation macro-F1 it reaches."""
    import numpy as np

    from abo_tf.classical import classifiers
    from abo_tf.testing import synthetic_features

    means = synthetic_features.class_means(num_classes, dimension)
    validation = synthetic_features.split("validation", 2000, means, 1)
    rows = []
    for size in sizes:
        train = synthetic_features.split("train", size, means, 2)
        for model in models:
            training = classifiers.Training(model, train, np.arange(size), classifiers.SGD_EPOCHS, 0)
            seconds = []
            for _ in range(repeats):
                fitted = classifiers.fit(training, FIXED_PARAMS[model], training.rows)
                seconds.append(fitted.seconds)
            score = classifiers.macro_f1(fitted.pipeline, validation)
            rows.append(
                {
                    "model": model,
                    "train_examples": size,
                    "seconds": statistics.median(seconds),
                    "all_seconds": seconds,
                    "validation_macro_f1": score,
                }
            )
            print(f"  {model} on {size}: {rows[-1]['seconds']:.2f} s (macro-F1 {score:.3f})", flush=True)
    return rows


def print_tables(results):
    extraction = results["extraction"]
    print(
        f"\n| feature extraction ({extraction['backbone']}, {extraction['image_size']} px, batch "
        f"{extraction['batch_size']}, {extraction['images']} images) | img/s |\n|---|---|"
    )
    print(
        f"| extract_features (records -> pipeline -> model -> cache) | {extraction['pipeline_images_per_second']:.1f} |"
    )
    print(f"| model.predict on decoded NumPy images | {extraction['predict_images_per_second']:.1f} |")
    print(f"| the traced feature function on decoded NumPy images | {extraction['traced_images_per_second']:.1f} |")
    print(
        f"\nextract_features / predict: {extraction['ratio']:.2f}x; extract_features / traced function: "
        f"{extraction['pipeline_vs_traced']:.2f}x"
    )
    sizes = sorted({row["train_examples"] for row in results["training"]})
    print(
        f"\nTraining seconds, one fit ({results['dimension']} synthetic features, {results['num_classes']} "
        f"long-tailed classes):\n"
    )
    print(
        "| model | "
        + " | ".join(f"{size} rows" for size in sizes)
        + " | growth per 4x rows |\n|---|"
        + "---|" * (len(sizes) + 1)
    )
    for model in dict.fromkeys(row["model"] for row in results["training"]):
        seconds = [row["seconds"] for row in results["training"] if row["model"] == model]
        growth = (seconds[-1] / seconds[0]) ** (1.0 / max(1, len(seconds) - 1))
        print(f"| {model} | " + " | ".join(f"{value:.2f}" for value in seconds) + f" | {growth:.1f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listings", type=int, default=300, help="sample size (~2.7 images per listing)")
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1000, 4000, 16000],
        help="training examples (4x apart for the growth column)",
    )
    parser.add_argument("--dimension", type=int, default=512, help="synthetic feature columns")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(FIXED_PARAMS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="abo_baselines_bench_")
    records, manifest = make_records(work_dir, args.listings)
    results = {
        "cpu_count": os.cpu_count(),
        "dimension": args.dimension,
        "num_classes": args.classes,
        "repeats": args.repeats,
    }
    print("feature extraction", flush=True)
    results["extraction"] = extraction_figures(records, manifest, args.backbone, work_dir, args.repeats)
    print("baseline training", flush=True)
    results["training"] = training_figures(args.sizes, args.dimension, args.classes, args.repeats, args.models)
    print_tables(results)
    write_results("baselines.json", results)


if __name__ == "__main__":
    main()
