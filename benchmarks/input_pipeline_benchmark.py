"""Benchmark: the tf.data input pipeline vs `keras.utils.image_dataset_from_directory`, and input-boundness.

    .venv/bin/python benchmarks/input_pipeline_benchmark.py [--listings 800] [--repeats 3]

1. Training and evaluation pipelines, images/s at 224 px, batch 64, on the
   same JPEGs (the train split of a generated sample, also written out as a
   class-per-folder tree for Keras' loader). Medians of `--repeats` timed
   passes of `--batches` batches after a warm-up.
2. Is training input-bound? Steps/s of the real training step (the custom
   loop's, small backbone) fed by the real pipeline vs by one batch held in
   memory. Target: at least 0.95x.
3. The recipe's costs (`--recipe [--image-size 224]`): images/s of the training
   pipeline with each augmentation (RandAugment, MixUp, CutMix, all) against the
   images/s of the train step fed from memory, and the step's cost of EMA of the
   weights and BatchNorm statistics; added to benchmarks/results/recipe_costs.json under the image size.
Prints Markdown tables and writes benchmarks/results/input_pipeline.json.
About 5-10 minutes on 2 cores.
"""

import argparse
import os
import statistics
import tempfile
import time

from shared import results_path, write_results

IMAGE_SIZE = 224
BATCH = 64


def make_data(work_dir, listings):
    """A sample build, and its train JPEGs as class folders (same bytes)."""
    import tensorflow as tf

    from abo_tf.records import schema, shards
    from abo_tf.testing import synthetic_abo as sample

    records = sample.sample_records(work_dir, listings)
    folders = os.path.join(work_dir, "folders")
    manifest = shards.read_manifest(records)
    if not os.path.isdir(folders):
        for record in tf.data.TFRecordDataset(shards.shard_paths(records, manifest, "train")):
            example = schema.parse_records(record)
            folder = os.path.join(folders, example[schema.PRODUCT_TYPE].numpy().decode())
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, example[schema.IMAGE_ID].numpy().decode() + ".jpg"), "wb") as handle:
                handle.write(example[schema.IMAGE].numpy())
    return records, folders, manifest


def images_per_second(dataset, batches, repeats):
    """Median images/s over `repeats` passes of `batches` batches, after one warm-up pass."""
    iterator = iter(dataset.repeat())
    rates = []
    for repeat in range(repeats + 1):
        start, count = time.perf_counter(), 0
        for _ in range(batches):
            element = next(iterator)
            count += int((element["image"] if isinstance(element, dict) else element[0]).shape[0])
        if repeat:  # the first pass warms up threads, autotuning and the page cache
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), rates


def pipeline_figures(records, folders, batches, repeats):
    import keras
    import tensorflow as tf

    from abo_tf.training import input_pipeline

    results = {}
    for mode, training in (("train", True), ("eval", False)):
        ours = input_pipeline.make_dataset(records, "train", IMAGE_SIZE, BATCH, training=training)
        keras_loader = keras.utils.image_dataset_from_directory(
            folders,
            image_size=(IMAGE_SIZE, IMAGE_SIZE),
            batch_size=BATCH,
            shuffle=training,
            seed=0,
            verbose=False,
        ).prefetch(tf.data.AUTOTUNE)  # as the Keras guides use it
        ours_rate, ours_all = images_per_second(ours, batches, repeats)
        keras_rate, keras_all = images_per_second(keras_loader, batches, repeats)
        results[mode] = {
            "abo_tf_images_per_second": ours_rate,
            "keras_images_per_second": keras_rate,
            "ratio": ours_rate / keras_rate,
            "all_abo_tf": ours_all,
            "all_keras": keras_all,
        }
        print(
            f"  {mode}: abo_tf {ours_rate:.0f} img/s, image_dataset_from_directory {keras_rate:.0f} img/s", flush=True
        )
    return results


def steps_per_second(step, iterator, steps, repeats):
    rates = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(steps):
            loss, _ = step(iterator)
        float(loss)  # wait for the last step
        if repeat:
            rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates), rates


def input_bound_figures(records, manifest, steps, repeats, image_size, batch):
    """Steps/s of the real train step: real pipeline vs one batch held in memory."""
    import numpy as np
    import tensorflow as tf

    from abo_tf.training import input_pipeline, models
    from abo_tf.training import loop as training

    strategy = tf.distribute.get_strategy()
    config = training.TrainConfig(
        records=records, output="", model="mobilenet_v3_small", weights="none", image_size=image_size, batch_size=batch
    )
    classes = manifest["classes"]
    model = models.build_model(config.model, len(classes), image_size, weights=None)
    optimizer = training.make_optimizer(config, 1e-3, 1000, model.trainable_variables)
    optimizer.build(model.trainable_variables)
    step = training.make_train_step(strategy, model, optimizer, config, np.ones(len(classes), np.float32), len(classes))
    real = iter(input_pipeline.make_dataset(records, "train", image_size, batch, training=True))
    held = next(iter(input_pipeline.make_dataset(records, "train", image_size, batch, training=True)))
    memory = iter(tf.data.Dataset.from_tensors(held).repeat())
    real_rate, real_all = steps_per_second(step, real, steps, repeats)
    memory_rate, memory_all = steps_per_second(step, memory, steps, repeats)
    print(f"  train step: real pipeline {real_rate:.2f} steps/s, batch in memory {memory_rate:.2f} steps/s", flush=True)
    return {
        "image_size": image_size,
        "batch_size": batch,
        "real_steps_per_second": real_rate,
        "memory_steps_per_second": memory_rate,
        "ratio": real_rate / memory_rate,
        "all_real": real_all,
        "all_memory": memory_all,
    }


AUGMENTATIONS = {
    "none": {},
    "randaugment": {"randaugment": True},
    "mixup": {"mixup_alpha": 0.2},
    "cutmix": {"cutmix_alpha": 1.0},
    "all": {"randaugment": True, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
}


def _memory_step_rate(records, manifest, steps, repeats, image_size, batch, **config_overrides):
    """Steps/s of the train step on one batch held in memory (the step alone)."""
    import numpy as np
    import tensorflow as tf

    from abo_tf.training import averages, input_pipeline, models
    from abo_tf.training import loop as training

    config = training.TrainConfig(
        records=records, output="", weights="none", image_size=image_size, batch_size=batch, **config_overrides
    )
    classes = manifest["classes"]
    model = models.build_model(config.model, len(classes), image_size, weights=None)
    optimizer = training.make_optimizer(config, 1e-3, 1000, model.trainable_variables)
    optimizer.build(model.trainable_variables)
    step = training.make_train_step(
        tf.distribute.get_strategy(),
        model,
        optimizer,
        config,
        np.ones(len(classes), np.float32),
        len(classes),
        averaged=averages.make_averages(model, config.ema_momentum),  # weights and BatchNorm statistics
    )
    held = next(iter(input_pipeline.make_dataset(records, "train", image_size, batch, training=True)))
    return steps_per_second(step, iter(tf.data.Dataset.from_tensors(held).repeat()), steps, repeats)[0]


def recipe_figures(records, manifest, batches, steps, repeats, image_size, batch):
    """Images/s of the training pipeline per augmentation vs of the step; the step with and without EMA."""
    from abo_tf.training import input_pipeline

    results = {"image_size": image_size, "batch_size": batch, "pipeline_images_per_second": {}}
    for name, settings in AUGMENTATIONS.items():
        dataset = input_pipeline.make_dataset(
            records, "train", image_size, batch, training=True, augmentation=input_pipeline.Augmentation(**settings)
        )
        rate = images_per_second(dataset, batches, repeats)[0]
        results["pipeline_images_per_second"][name] = rate
        print(f"  pipeline with {name}: {rate:.0f} img/s", flush=True)
    plain = _memory_step_rate(records, manifest, steps, repeats, image_size, batch)
    averaged = _memory_step_rate(records, manifest, steps, repeats, image_size, batch, ema_momentum=0.999)
    results.update(
        step_images_per_second=plain * batch,
        ema_step_images_per_second=averaged * batch,
        ema_step_time_ratio=plain / averaged,
    )
    print(
        f"  train step: {plain * batch:.0f} img/s, with EMA {averaged * batch:.0f} img/s "
        f"(step time x{plain / averaged:.2f})",
        flush=True,
    )
    return results


def _record_recipe_costs(figures):
    """Adds `figures` (with the machine and its load) to recipe_costs.json under their image size."""
    import json

    from abo_tf.testing import measure

    try:
        with open(results_path("recipe_costs.json"), encoding="utf-8") as handle:
            results = json.load(handle)
    except FileNotFoundError:
        results = {}
    by_size = results.get("by_image_size", {})
    by_size[str(figures["image_size"])] = {**figures, "machine": measure.machine()}
    write_results("recipe_costs.json", {"by_image_size": by_size})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listings", type=int, default=800, help="sample size (~2.7 images per listing)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--recipe", action="store_true", help="only section 3, at --image-size and batch 32")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="pixels of section 3 (224)")
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="abo_pipeline_bench_")
    records, folders, manifest = make_data(work_dir, args.listings)
    if args.recipe:
        figures = recipe_figures(records, manifest, args.batches, args.steps, args.repeats, args.image_size, 32)
        _record_recipe_costs(figures)
        return
    results = {
        "cpu_count": os.cpu_count(),
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH,
        "train_images": manifest["splits"]["train"]["num_examples"],
    }
    results.update(pipeline_figures(records, folders, args.batches, args.repeats))
    results["input_bound"] = input_bound_figures(records, manifest, args.steps, args.repeats, IMAGE_SIZE, 32)
    print("\n| pipeline | abo_tf (img/s) | image_dataset_from_directory (img/s) | ratio |\n|---|---|---|---|")
    for mode in ("train", "eval"):
        row = results[mode]
        print(
            f"| {mode} | {row['abo_tf_images_per_second']:.0f} | {row['keras_images_per_second']:.0f} | "
            f"{row['ratio']:.2f}x |"
        )
    bound = results["input_bound"]
    print(
        f"\ntraining step (mobilenet_v3_small, {bound['image_size']} px, batch {bound['batch_size']}): real pipeline "
        f"{bound['real_steps_per_second']:.2f} steps/s, batch in memory {bound['memory_steps_per_second']:.2f} "
        f"steps/s: {bound['ratio']:.2f}x"
    )
    write_results("input_pipeline.json", results)


if __name__ == "__main__":
    main()
