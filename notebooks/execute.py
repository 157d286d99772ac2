"""Runs a notebook top to bottom and saves it with its outputs: `make notebook`.

    python notebooks/execute.py notebooks/abo_exploration.ipynb [--work DIR]

The committed notebook carries its figures, so a code host shows them; the
notebook's files go to a temporary folder (ABO_NOTEBOOK_DIR), not the repository.
"""

import argparse
import base64
import os
import sys
import tempfile

import cv2
import nbformat
import numpy as np
from nbclient import NotebookClient

EMBEDDED_WIDTH = 720  # pixels: the report figures are drawn for files; in the notebook a smaller copy reads as well


def execute(path, work_dir, timeout=900):
    """Executes the notebook at `path` with its files under `work_dir`; returns the executed notebook."""
    os.environ["ABO_NOTEBOOK_DIR"] = work_dir
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure
    return notebook


def shrink_figures(notebook, width=EMBEDDED_WIDTH):
    """Re-encodes every embedded PNG wider than `width` at that width, so the committed notebook stays small."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            image = cv2.imdecode(np.frombuffer(base64.b64decode(data["image/png"]), np.uint8), cv2.IMREAD_COLOR)
            if image is None or image.shape[1] <= width:
                continue
            height = round(image.shape[0] * width / image.shape[1])
            small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            data["image/png"] = base64.b64encode(
                cv2.imencode(".png", small, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]
            ).decode()
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
    nbformat.write(shrink_figures(notebook), args.notebook)
    print(f"executed and saved {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
