"""Which features to compute: handcrafted descriptors, or a CNN given by a backbone + weights or by a training run."""

# Keras is imported inside the functions that need it: descriptor worker
# processes import the command module, and with it this one.

import dataclasses
import os

from abo_tf.classical import descriptors
from abo_tf.common import options, parallel
from abo_tf.common.errors import UserInputError
from abo_tf.records import shards
from abo_tf.training import run_folder

HANDCRAFTED = "handcrafted"
CNN = "cnn"
KINDS = (HANDCRAFTED, CNN)
DEFAULT_IMAGE_SIZE = {HANDCRAFTED: 128, CNN: 224}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which features: handcrafted, or a CNN given by a backbone + weights or by a run folder."""

    kind: str
    backbone: str | None = None
    weights: str | None = "imagenet"  # None for handcrafted
    run: str | None = None
    image_size: int | None = None  # None: DEFAULT_IMAGE_SIZE, or the run's
    seed: int = 0  # draws the random backbone of weights="none", so every split sees the same one

    @property
    def name(self):
        """Short readable name: `handcrafted`, `resnet50-imagenet-224px`, `run-NAME`.

        The image size is part of a backbone's name: the same backbone at two
        sizes gives two feature sets, and two baseline folders.
        """
        if self.kind == HANDCRAFTED:
            return HANDCRAFTED
        if self.run:
            return "run-" + os.path.basename(os.path.normpath(self.run))
        weights = (
            self.weights
            if self.weights in ("imagenet", "none")
            else os.path.splitext(os.path.basename(self.weights))[0]
        )
        return f"{self.backbone}-{weights}" + (f"-{self.image_size}px" if self.image_size else "")


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """The options that choose features, shared by `abo_tf.features` and `abo_tf.baselines`."""

    records: str = options.option(
        help="folder of a build_records output (with manifest.json)", group="data", required=True
    )
    features: str = options.option(
        HANDCRAFTED, choices=KINDS, group="features", help="handcrafted OpenCV descriptors or CNN embeddings"
    )
    backbone: str | None = options.option(
        group="features", help="Keras Applications backbone for --features cnn (see abo_tf.training.models.BACKBONES)"
    )
    weights: str = options.option(
        "imagenet", group="features", help="backbone weights: imagenet | none | PATH to a Keras notop weights file"
    )
    run: str | None = options.option(
        group="features",
        help="a training run folder (with model.keras) whose pooled features to use, instead of --backbone",
    )
    image_size: int | None = options.option(
        group="features",
        minimum=32,
        maximum=options.MAX_IMAGE_SIZE,
        help=f"pixels; default {DEFAULT_IMAGE_SIZE[HANDCRAFTED]} handcrafted, {DEFAULT_IMAGE_SIZE[CNN]} cnn, the "
        f"run's for --run",
    )
    batch_size: int = options.option(
        64,
        group="features",
        minimum=1,
        maximum=options.MAX_BATCH_SIZE,
        help="images per batch of the evaluation pipeline",
    )
    workers: int = options.option(
        os.cpu_count() or 1,
        group="features",
        minimum=1,
        maximum=parallel.MAX_WORKERS,
        config=False,
        help="processes for the handcrafted descriptors (default: this machine's cores)",
    )
    seed: int = options.option(
        0,
        group="features",
        help="draws the random backbone of --weights none (for baselines also subsamples, SGD, bootstrap resamples)",
        **options.SEED_BOUNDS,
    )

    def feature_spec(self):
        """The `FeatureSpec` these options choose."""
        return FeatureSpec(
            kind=self.features,
            backbone=self.backbone,
            weights=self.weights,
            run=self.run,
            image_size=self.image_size,
            seed=self.seed,
        )


def _run_model_path(run):
    return run_folder.path(
        run_folder.check_run(run, needs=run_folder.KERAS_MODEL, flag="--run"), run_folder.KERAS_MODEL
    )


def load_run_model(run):
    """The Keras model of a training run folder.

    Raises:
      UserInputError: the folder or its model.keras does not exist, or it is not a Keras model.
    """
    return run_folder.load_keras_model(_run_model_path(run))


def _run_image_size(run):
    saved = run_folder.load_config(run) or {}
    if "image_size" in saved:
        return run_folder.served_image_size(saved)  # model.keras was saved at --eval-image-size
    return int(load_run_model(run).input.shape[1])


def _resolve_run(spec):
    _run_model_path(spec.run)
    size = _run_image_size(spec.run)
    if spec.image_size and spec.image_size != size:
        raise UserInputError(
            f"--image-size {spec.image_size}: the run in {spec.run!r} takes {size} px images; leave --image-size out"
        )
    return dataclasses.replace(spec, image_size=size)


def _resolve_backbone(spec):
    from abo_tf.training import models

    if spec.backbone not in models.BACKBONES:
        raise UserInputError(f"unknown backbone {spec.backbone!r}: choose one of {sorted(models.BACKBONES)}")
    models.check_weights(spec.weights)
    size = spec.image_size or DEFAULT_IMAGE_SIZE[CNN]
    minimum = models.BACKBONES[spec.backbone].min_image_size
    if size < minimum:  # checked now rather than when the model is first built, after a split was read
        raise UserInputError(f"--image-size {size} is too small for {spec.backbone}: use at least {minimum} pixels")
    return dataclasses.replace(spec, image_size=size)


def resolve_spec(spec):
    """Checks a spec and fills in its image size.

    Args:
      spec: a `FeatureSpec`, image size optional.

    Returns:
      The `FeatureSpec` with `image_size` set.

    Raises:
      UserInputError: unknown kind or backbone, cnn without exactly one of
        backbone and run, a run folder without model.keras, a missing weights
        file, or an image size that contradicts the run's.
    """
    if spec.kind not in KINDS:
        raise UserInputError(f"--features {spec.kind!r}: choose one of {KINDS}")
    if spec.image_size is not None and spec.image_size < 1:
        raise UserInputError(
            f"--image-size {spec.image_size}: give a positive number of pixels, or leave it out for the default"
        )
    if spec.kind == HANDCRAFTED and (spec.backbone or spec.run):
        given = "--run" if spec.run else "--backbone"
        raise UserInputError(f"{given} chooses CNN features: add --features cnn (the default is handcrafted)")
    if spec.kind == HANDCRAFTED:
        # The weights mean nothing here; dropped so baseline.json does not suggest otherwise.
        return dataclasses.replace(
            spec, backbone=None, weights=None, run=None, image_size=spec.image_size or DEFAULT_IMAGE_SIZE[HANDCRAFTED]
        )
    if bool(spec.backbone) == bool(spec.run):
        raise UserInputError("--features cnn needs exactly one of --backbone NAME (with --weights) and --run RUN_DIR")
    return _resolve_run(spec) if spec.run else _resolve_backbone(spec)


def model_identity(spec):
    """What makes the features of one model differ from another's (part of the feature cache key).

    Args:
      spec: a resolved `FeatureSpec`.

    Returns:
      A JSON-able dict: the descriptors' parameters, the run model's SHA-256,
      or the backbone and its weights (a weights file by its SHA-256).
    """
    if spec.kind == HANDCRAFTED:
        return descriptors.descriptor_parameters()
    if spec.run:
        return {"run_model_sha256": shards.file_sha256(_run_model_path(spec.run))}
    from abo_tf.training import models

    if spec.weights == models.NO_WEIGHTS:
        weights = f"none:seed={spec.seed}"
    elif spec.weights == "imagenet":
        weights = "imagenet:" + models.BACKBONES[spec.backbone].weights_file  # Keras checks the file's hash on download
    else:
        weights = "sha256:" + shards.file_sha256(spec.weights)
    return {"backbone": spec.backbone, "weights": weights}
