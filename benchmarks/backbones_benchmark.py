"""Benchmark: each backbone's size and the parity of its export at another evaluation size, as the README's table.

    .venv/bin/python benchmarks/backbones_benchmark.py --backbones efficientnetv2_b0 efficientnetv2_s convnext_tiny
        (random weights, 32 px trained, 40 px exported; 3-10 minutes a backbone on 2 shared cores)

For each backbone, what a run's end does, without the training: the classifier (weights=None, its head scaled
so that probabilities differ between images) is copied in float32 from its own config at --eval-image-size,
exported, and both signatures are compared with the classifier itself run at that size on --images generated
JPEG/PNG images. Writes benchmarks/results/backbones.json and backbones.md (the table the README shows).
"""

import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from shared import write_results, write_text_results

from abo_tf.common import options  # noqa: E402
from abo_tf.reports import markdown  # noqa: E402
from abo_tf.testing import measure  # noqa: E402
from abo_tf.training import models  # noqa: E402

CLASSES = ("chair", "lamp", "shoe")


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    backbones: tuple[str, ...] = options.option(
        ("efficientnetv2_b0", "efficientnetv2_s", "convnext_tiny"),
        help="keys of models.BACKBONES",
        nargs="+",
        choices=tuple(sorted(models.BACKBONES)),
    )
    image_size: int = options.option(32, help="the size the classifier is built for", minimum=32)
    eval_image_size: int = options.option(40, help="the size it is copied, exported and compared at", minimum=32)
    images: int = options.option(16, help="generated images compared", minimum=1)


def _images(count, size):
    """Batches of {"image": pixels, encoded bytes} of generated photographs of several sizes, JPEG and PNG."""
    import numpy as np
    import tensorflow as tf

    from abo_tf.training import input_pipeline, preprocess

    encoded = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (24 + 7 * seed, 40 + 3 * seed, 3), dtype=np.uint8)
        encode = tf.io.encode_png if seed % 2 else tf.io.encode_jpeg
        encoded.append(encode(pixels).numpy())
    pixels = np.stack([preprocess.eval_image(data, size).numpy() for data in encoded])
    return [{"image": tf.constant(pixels), input_pipeline.ENCODED_IMAGE: tf.constant(encoded)}]


def _classifier(backbone, image_size, batch):
    """The classifier, taking any size, with its head scaled: random backbones pool features of 1e-11 to 1e-7."""
    import numpy as np

    model = models.accept_any_image_size(models.build_model(backbone, len(CLASSES), image_size))
    logits = model(batch["image"], training=False).numpy()  # the bias starts at zero: pooled features @ kernel
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * 3.0 / np.abs(logits - logits.mean(axis=0)).max(), bias])
    return model


def measure_backbone(backbone, benchmark, batches, folder):
    """{params, backbone_params, seconds, parity} of one backbone."""
    from abo_tf.training import export, loop, parity

    started = time.perf_counter()
    model = _classifier(backbone, benchmark.image_size, batches[0])
    copy = loop._plain_copy(model, benchmark.eval_image_size)
    built = time.perf_counter()
    export_dir = export.export_saved_model(copy, CLASSES, benchmark.eval_image_size, os.path.join(folder, backbone))
    exported = time.perf_counter()
    results = export.saved_model_parity(model, export.load_exported(export_dir), batches)
    return {
        "params": model.count_params(),
        "backbone_params": models.backbone_of(model).count_params(),
        "keras_name": models.backbone_of(model).name,
        "seconds": {"build_and_copy": built - started, "export": exported - built},
        "parity": parity.to_json(results),
    }


def table(record):
    """The README's Markdown table: one row per backbone."""
    rows = []
    for backbone, result in record["backbones"].items():
        signatures = result["parity"]["signatures"]
        rows.append(
            [
                backbone,
                f"`{result['keras_name']}`",
                f"{result['params'] / 1e6:.2f}M",
                f"{max(entry['max_abs_difference'] for entry in signatures.values()):.1e}",
                f"{min(entry['top1_agreement'] for entry in signatures.values()):.4f}",
                "passed" if result["parity"]["passed"] else "FAILED",
                f"{result['seconds']['export']:.0f}",
            ]
        )
    columns = ["backbone", "Keras name", "parameters", "max abs dp", "top-1 agreement", "parity", "export s"]
    machine = record["machine"]
    return (
        markdown.table(rows, columns)
        + f"\n\nRandom weights (3 classes), built at {record['image_size']} px, copied, exported and compared at "
        f"{record['eval_image_size']} px on {record['images']} generated images (both signatures); "
        f"{machine['cpus']} CPUs at load average {machine['load_average'][0]:.1f} ({machine['date']}).\n"
    )


def main(argv=None):
    benchmark, _ = options.parse(
        BenchmarkOptions, argv, prog="backbones_benchmark", description=__doc__.split("\n\n")[0]
    )
    batches = _images(benchmark.images, benchmark.eval_image_size)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for backbone in benchmark.backbones:
            results[backbone] = measure_backbone(backbone, benchmark, batches, folder)
            print(f"{backbone}: {results[backbone]}", file=sys.stderr, flush=True)
    record = {
        **{field.name: getattr(benchmark, field.name) for field in dataclasses.fields(benchmark)},
        "backbones": results,
        "machine": measure.machine(),
    }
    write_results("backbones.json", record)
    text = table(record)
    write_text_results("backbones.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
