"""Runs a notebook top to bottom and saves it with its outputs: `make notebook`.

    python notebooks/execute.py notebooks/abo_exploration.ipynb [--work DIR]

The committed notebook carries its figures, so a code host shows them; the
notebook's files go to a temporary folder (ABO_NOTEBOOK_DIR), not the repository.
"""

import argparse
import os
import sys
import tempfile

import nbformat
from nbclient import NotebookClient


def execute(path, work_dir, timeout=900):
    """Executes the notebook at `path` with its files under `work_dir`; returns the executed notebook."""
    os.environ["ABO_NOTEBOOK_DIR"] = work_dir
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure
    return notebook


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", help="the .ipynb to run and save in place")
    parser.add_argument("--work", help="folder for what the notebook writes (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        notebook = execute(args.notebook, args.work or temporary)
    for cell in notebook.cells:  # execution metadata changes on every run; the outputs are what matter
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(notebook, args.notebook)
    print(f"executed and saved {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
