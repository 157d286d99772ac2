"""What a pipeline folder's commands found, in a few lines: `python -m abo_tf.summarize FOLDER`.

    python -m abo_tf.summarize demo

Reads FOLDER/baselines/comparison.csv (the CNN runs and the baselines on test), FOLDER/audit/summary.json and the
runs' test_predictions.csv; prints the CNN against the best baseline on test macro F1 (95% intervals by item, and
the paired interval of the difference), what the audit found, and the paths of the four reports; writes
FOLDER/summary.json. `make demo` ends with it.
"""

import dataclasses
import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main
from abo_tf.reports import bootstrap, demo_summary


@dataclasses.dataclass(frozen=True)
class SummarizeOptions:
    """The pipeline folder to summarise."""

    folder: str = options.option(
        help="a folder laid out as `make demo` lays out demo/", metavar="FOLDER", positional=True
    )
    bootstrap_samples: int = bootstrap.samples_option("comparison")
    seed: int = options.option(0, group="comparison", help="seeds the bootstrap resamples", **options.SEED_BOUNDS)


@cli_main
def main(argv=None):
    """Prints the summary; returns the exit code."""
    parsed, _ = options.parse(
        SummarizeOptions, argv, prog="python -m abo_tf.summarize", description=__doc__.split("\n\n")[0]
    )
    summary = demo_summary.summarize(parsed.folder, parsed.bootstrap_samples, parsed.seed)
    print(demo_summary.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
