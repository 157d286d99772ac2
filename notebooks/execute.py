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
PHOTO_BYTES = 100_000  # a figure whose PNG is larger is mostly photographs


def execute(path, work_dir, timeout=900):
    """Executes the notebook at `path` with its files under `work_dir`; returns the executed notebook."""
    os.environ["ABO_NOTEBOOK_DIR"] = work_dir
    os.environ.pop("ABO_NOTEBOOK_QUICK", None)  # the committed outputs are the full run's, never the tests' short one
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
    """Embeds every figure at most `width` wide, photographs as JPEG: the committed notebook stays small."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                _shrink(data, width)
    return notebook


def _shrink(data, width):
    image = cv2.imdecode(np.frombuffer(base64.b64decode(data["image/png"]), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return
    if image.shape[1] > width:
        size = (width, round(image.shape[0] * width / image.shape[1]))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]
    if len(png) > PHOTO_BYTES:  # galleries of photographs: JPEG is a fifth of the size and looks the same
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1]
        data["image/jpeg"] = base64.b64encode(jpeg).decode()
        del data["image/png"]
    else:
        data["image/png"] = base64.b64encode(png).decode()


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
