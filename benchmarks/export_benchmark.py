"""Benchmark: every export format of a trained run, its size, latency and parity, as the README's table.

    .venv/bin/python benchmarks/export_benchmark.py --run demo/run    (after `make demo`; about 3 minutes)

Runs `abo_tf.export` for each format (into RUN/exports/FORMAT) on the run's test split and
writes benchmarks/results/export.json (every parity.json, the load average before and after)
and benchmarks/results/export.md, the table the README shows as it is.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from shared import write_results, write_text_results

from abo_tf.common import options  # noqa: E402
from abo_tf.conversion import convert, exporting  # noqa: E402
from abo_tf.reports import markdown  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    run: str = options.option(help="a trained run folder (make demo: demo/run)", required=True)
    latency_runs: int = options.option(100, help="timed single-image calls per runtime", minimum=4)


def _row(name, size, metrics_entry, latency, agreement=None):
    return [
        name,
        f"{size / 2**20:.2f}",
        f"{latency['batch1_p50_ms']:.2f}",
        f"{latency['batch1_p95_ms']:.2f}",
        f"{latency['images_per_second']:.0f}",
        f"{metrics_entry['accuracy']:.4f}",
        f"{metrics_entry['macro_f1']:.4f}",
        f"{agreement['top1_agreement']:.4f}" if agreement else "reference",
        f"{agreement['max_abs_difference']:.1e}" if agreement else "",
        ("yes" if agreement["passed"] else "NO") if agreement else "",
    ]


def table(results):
    """The README's Markdown table: the SavedModel first, then each format."""
    first = results[convert.FORMATS[0]]
    rows = [
        _row(
            "SavedModel",
            first["bytes"]["saved_model"],
            first["metrics"]["saved_model"],
            first["latency"]["saved_model"],
        )
    ]
    for name in convert.FORMATS:
        result = results[name]
        agreement = {**result["parity"], "passed": result["passed"]}
        rows.append(
            _row(name, result["bytes"]["export"], result["metrics"]["export"], result["latency"]["export"], agreement)
        )
    columns = [
        "format",
        "MB",
        "p50 ms",
        "p95 ms",
        "images/s (batch 32)",
        "accuracy",
        "macro F1",
        "top-1 agreement",
        "max abs dp",
        "target met",
    ]
    return markdown.table(rows, columns)


def _conditions(record):
    """The line under the table: where and at what load the latencies were measured."""
    first = record["formats"][convert.FORMATS[0]]
    return (
        f"{first['parity']['num_images']} {first['split']} images; latency on {record['cpus']} CPUs at load average "
        f"{record['load_average_before'][0]:.1f} (before) and {record['load_average_after'][0]:.1f} (after), "
        f"{first['latency']['saved_model']['runs']} single-image calls per runtime: on a shared machine "
        "p95 and throughput move with the load, p50 less."
    )


def main(argv=None):
    benchmark, _ = options.parse(BenchmarkOptions, argv, prog="export_benchmark", description=__doc__.split("\n\n")[0])
    load_before = os.getloadavg()
    results = {}
    for name in convert.FORMATS:
        export_options = exporting.ExportOptions(
            run=benchmark.run, format=name, latency_runs=benchmark.latency_runs, allow_degraded=True, progress=False
        )
        results[name] = exporting.export(export_options)
        print(f"{name}: {results[name]['parity']}", file=sys.stderr)
    record = {
        "run": benchmark.run,
        "formats": results,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    write_results("export.json", record)
    text = table(results) + "\n\n" + _conditions(record) + "\n"
    write_text_results("export.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
