"""Write a synthetic ABO download in the real layout: `python -m abo_tf.sample OUT_DIR`.

    python -m abo_tf.sample demo/abo --listings 800 --seed 0 [--tar]

The generator is test and demo support (`abo_tf.testing.synthetic_abo`): the
real archives cannot be downloaded on the project's machines. The same options
give the same bytes.
"""

import dataclasses
import os
import sys
import time

from abo_tf.common import files, options, parallel
from abo_tf.common.errors import UserInputError, cli_main
from abo_tf.testing import synthetic_abo


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """What `generate_sample` is asked for."""

    output_dir: str = options.option(help="new or empty folder to write into", metavar="OUT_DIR", positional=True)
    listings: int = options.option(
        synthetic_abo.DEFAULT_LISTINGS,
        help="listings to write",
        minimum=synthetic_abo.MIN_LISTINGS,
        maximum=1_000_000,  # the build's listings limit; ABO has 147,702
    )
    seed: int = options.option(
        synthetic_abo.DEFAULT_SEED, help="seed; the same seed gives the same bytes", **options.SEED_BOUNDS
    )
    types: int = options.option(
        synthetic_abo.DEFAULT_TYPES,
        help="product types; past 16 each further type is a new look (ABO has 576)",
        minimum=synthetic_abo.DEFAULT_TYPES,
        maximum=synthetic_abo.max_types(),
    )
    tar: bool = options.option(False, help="write only abo-listings.tar and abo-images-small.tar, as downloaded")
    max_side: int = options.option(
        synthetic_abo.DEFAULT_MAX_SIDE, help="longest side of an image, in pixels", minimum=32, maximum=4096
    )
    truth: str = options.option(
        "",
        metavar="FILE.json",
        config=False,
        help="also write what was planted (the generator's truth) to this file, e.g. for abo_tf.audit --truth",
    )
    workers: int | None = options.option(
        help="rendering processes (default: by size and CPU count)",
        minimum=1,
        maximum=parallel.MAX_WORKERS,
        config=False,
    )


@cli_main
def main(argv=None):
    sample_options, _ = options.parse(
        SampleOptions, argv, prog="python -m abo_tf.sample", description=__doc__.split("\n\n")[0]
    )
    truth_folder = os.path.dirname(os.path.abspath(sample_options.truth))
    if sample_options.truth and not os.path.isdir(truth_folder):
        raise UserInputError(f"--truth {sample_options.truth!r}: folder {truth_folder!r} does not exist")
    # Checked before the sample is written: a folder here was a traceback from the rename, after all the work.
    if os.path.lexists(sample_options.truth) and not os.path.isfile(sample_options.truth):
        raise UserInputError(
            f"--truth {sample_options.truth!r} is a folder (or a FIFO, a device or a broken link): give a file name"
        )
    start = time.perf_counter()
    truth = synthetic_abo.generate_sample(
        sample_options.output_dir,
        num_listings=sample_options.listings,
        seed=sample_options.seed,
        tar=sample_options.tar,
        max_side=sample_options.max_side,
        workers=sample_options.workers,
        num_types=sample_options.types,
    )
    if sample_options.truth:
        files.write_json(sample_options.truth, truth)
    print(synthetic_abo.summary(truth, sample_options.output_dir, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
