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

import dataclasses
import sys

from abo_tf.classical import extraction, feature_spec
from abo_tf.classical.feature_cache import DEFAULT_CACHE_DIR
from abo_tf.common import options
from abo_tf.common.errors import cli_main
from abo_tf.records.split import SPLITS


@dataclasses.dataclass(frozen=True)
class ExtractOptions(feature_spec.FeatureOptions):
    """`python -m abo_tf.features`: the feature options, which splits, and where the cache is."""

    splits: tuple[str, ...] = options.option(SPLITS, group="data", help="splits to extract")
    cache_dir: str = options.option(DEFAULT_CACHE_DIR, group="output", config=False, help="feature cache folder")
    progress: bool = options.option(
        True, group=options.CONSOLE_GROUP, config=False, help="a progress bar per extracted split"
    )


def _summary(split, data):
    source = "cached" if data.cached else f"{data.info['images_per_second']:.0f} img/s"
    return f"{split}: {data.features.shape[0]} x {data.features.shape[1]} ({source}) in {data.path}"


@cli_main
def main(argv=None):
    extract, _ = options.parse(
        ExtractOptions, argv, prog="python -m abo_tf.features", description=__doc__.split("\n\n")[0]
    )
    results = extraction.extract_features(
        extract.records,
        extract.feature_spec(),
        extract.splits,
        extract.cache_dir,
        extract.batch_size,
        extract.workers,
        extract.progress,
    )
    for split, data in results.items():
        print(_summary(split, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
