"""Features for the classical baselines, cached per split: `python -m abo_tf.features`.

    python -m abo_tf.features --records tfrecords/abo/1.0.0 --features handcrafted --cache-dir features
    python -m abo_tf.features --records tfrecords/abo/1.0.0 --features cnn --backbone resnet50 --weights imagenet
    python -m abo_tf.features --records tfrecords/abo/1.0.0 --features cnn --run runs/resnet50

Two kinds, both computed on the uint8 pixels of the evaluation input pipeline
(the crop every model is evaluated on): `cnn`, the pooled output of a Keras
Applications backbone (`--backbone` + `--weights`) or of a trained run's model
(`--run`); `handcrafted`, OpenCV colour, shape and texture descriptors computed
in worker processes. The library is abo_tf/classical/: descriptors.py,
feature_spec.py, feature_cache.py (what a cache folder holds, and its key),
extraction.py.
"""

import argparse
import os
import sys

from abo_tf.classical import extraction
from abo_tf.classical.feature_cache import DEFAULT_CACHE_DIR
from abo_tf.classical.feature_spec import CNN, DEFAULT_IMAGE_SIZE, HANDCRAFTED, KINDS, FeatureSpec
from abo_tf.common.errors import cli_main
from abo_tf.records.split import SPLITS


def add_feature_arguments(parser):
    """The feature flags, shared with `abo_tf.baselines`; returns the argument group."""
    group = parser.add_argument_group("features")
    group.add_argument("--features", choices=KINDS, default=HANDCRAFTED, help="handcrafted OpenCV descriptors or CNN embeddings")
    group.add_argument("--backbone", help="Keras Applications backbone for --features cnn (see abo_tf.training.models.BACKBONES)")
    group.add_argument("--weights", default="imagenet", help="backbone weights: imagenet | none | PATH to a Keras notop weights file")
    group.add_argument("--run", help="a training run folder (with model.keras) whose pooled features to use, instead of --backbone")
    group.add_argument("--image-size", type=int, default=None, help=f"pixels; default {DEFAULT_IMAGE_SIZE[HANDCRAFTED]} handcrafted, {DEFAULT_IMAGE_SIZE[CNN]} cnn, the run's for --run")
    group.add_argument("--batch-size", type=int, default=64, help="images per batch of the evaluation pipeline")
    group.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the handcrafted descriptors (default: every core, here %(default)s)")
    return group


def spec_from_args(args):
    """The `FeatureSpec` of parsed flags."""
    return FeatureSpec(kind=args.features, backbone=args.backbone, weights=args.weights, run=args.run, image_size=args.image_size, seed=args.seed)


def _parser():
    parser = argparse.ArgumentParser(prog="python -m abo_tf.features", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--records", required=True, help="folder of a build_records output (with manifest.json)")
    data.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to extract")
    add_feature_arguments(parser).add_argument("--seed", type=int, default=0, help="draws the random backbone of --weights none")
    output = parser.add_argument_group("output")
    output.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="feature cache folder")
    output.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar per extracted split")
    return parser


def _summary(split, data):
    source = "cached" if data.cached else f"{data.info['images_per_second']:.0f} img/s"
    return f"{split}: {data.features.shape[0]} x {data.features.shape[1]} ({source}) in {data.path}"


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    spec = spec_from_args(args)
    results = extraction.extract_features(
        args.records, spec, args.splits, args.cache_dir, args.batch_size, args.workers, args.progress
    )
    for split, data in results.items():
        print(_summary(split, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
