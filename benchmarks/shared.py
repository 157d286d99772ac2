"""What every benchmark shares: the repository on sys.path, and where and how results are written.

Each benchmark runs as a script (`python benchmarks/NAME.py`), so this folder is on sys.path and
`import shared` finds this module; the repository is put there too, for `abo_tf`.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results")


def results_path(name):
    """benchmarks/results/NAME."""
    return os.path.join(RESULTS, name)


def write_results(name, results):
    """Writes benchmarks/results/NAME through the project's one JSON writer (atomic, sorted keys); its path."""
    from abo_tf.common import files

    os.makedirs(RESULTS, exist_ok=True)
    return files.write_json(results_path(name), results)


def write_text_results(name, text):
    """Writes benchmarks/results/NAME (a rendered table the README includes) and prints it."""
    with open(results_path(name), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
