"""A data-analysis report on the raw ABO files: `python -m abo_tf.analyze`.

    python -m abo_tf.analyze --listings abo-listings.tar --images abo-images-small.tar \\
        --records tfrecords/abo/1.0.0 --report reports/data

Without --listings/--images, the download is looked for under data/. The
report (report.md, CSV tables, PNG figures) is described in
`abo_tf.reports.data_report`.
"""

import os
import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main
from abo_tf.reports import data_report


@cli_main
def main(argv=None):
    analyze_options, _ = options.parse(
        data_report.AnalyzeOptions, argv, prog="python -m abo_tf.analyze", description=__doc__.split("\n\n")[0]
    )
    result = data_report.analyze(analyze_options)
    for _, row in result["overview"].head(3).iterrows():
        print(f"{row['quantity']}: {row['value']}")
    print(f"report: {os.path.join(analyze_options.report, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
