"""ABO archives -> leak-free, sharded TFRecords: `python -m abo_tf.build_records`.

    python -m abo_tf.build_records --listings abo-listings.tar \\
        --images abo-images-small.tar --output tfrecords/abo/1.0.0
    python -m abo_tf.build_records --verify tfrecords/abo/1.0.0

Without --listings/--images the download is looked for under data/ (the tars
as downloaded, or the folders they extract to). How the build reads, checks,
labels, splits and writes is in `abo_tf.records.build`; the ABO files and
their quirks in docs/abo-format.md.
"""

import dataclasses
import os
import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main
from abo_tf.records import build, shards


@dataclasses.dataclass(frozen=True)
class BuildCommandOptions(build.BuildOptions):
    """The build's options, or a build to verify instead."""

    verify: str | None = options.option(
        metavar="DIR",
        group="verification",
        config=False,
        help="instead of building, re-read a build: CRCs, counts, hashes, every image decodes (on every core)",
    )


@cli_main
def main(argv=None):
    command, _ = options.parse(
        BuildCommandOptions, argv, prog="python -m abo_tf.build_records", description=__doc__.split("\n\n")[0]
    )
    if command.verify:
        report = shards.verify_records(command.verify, progress=command.progress)
        print(
            f"verified {command.verify}: "
            + ", ".join(f"{name} {count}" for name, count in report.items())
            + " examples; CRCs, hashes, counts and decoding OK"
        )
        return 0
    build_options = build.BuildOptions(
        **{field.name: getattr(command, field.name) for field in dataclasses.fields(build.BuildOptions)}
    )
    manifest = build.build(build_options)
    print(build.format_summary(manifest))
    print(f"wrote {os.path.abspath(build_options.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
