"""Classify image files with an exported model: `python -m abo_tf.predict`.

    python -m abo_tf.predict --model runs/demo/saved_model photo1.jpg photo2.png
    python -m abo_tf.predict --model runs/demo/saved_model --top-k 3 --json *.jpg
    python -m abo_tf.predict --model runs/demo/exports/litert-int8/model_int8.tflite photo1.jpg

`--model` is a SavedModel folder or a .tflite or .onnx file from
`python -m abo_tf.export`; the file gets the same header check and central crop
as the SavedModel does inside its graph, so the output is the same.

A file that cannot be read or decoded is reported on stderr as one line
(`error: PATH: reason`) and skipped; the others are still classified, and the
exit code is 1. That includes a file over `MAX_FILE_BYTES` (refused before it
is read) and an image over the build's pixel limit (refused by the SavedModel
from its header, before it is decoded). A model folder that is missing or not
an `abo_tf.training.export` SavedModel (or a file without the export's
metadata) exits with 2.
"""

import dataclasses
import json
import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """What to classify, with which model, printed how."""

    model: str = options.option(
        help="a run's SavedModel folder (RUN_DIR/saved_model), or a .tflite or .onnx file of abo_tf.export",
        metavar="MODEL",
        required=True,
    )
    images: tuple[str, ...] = options.option(
        help="image files (JPEG, PNG, GIF or BMP)", metavar="IMAGE", nargs="+", positional=True
    )
    top_k: int = options.option(5, help="predictions per image", minimum=1, maximum=options.MAX_SHOWN)
    json: bool = options.option(False, help="print one JSON object per image instead of a table")


@cli_main
def main(argv=None):
    """Prints the top-k predictions of each image; returns the exit code."""
    predict_options, _ = options.parse(
        PredictOptions, argv, prog="python -m abo_tf.predict", description=__doc__.split("\n\n")[0]
    )
    from abo_tf.conversion import runtimes  # TensorFlow: after the options are known to be good
    from abo_tf.training import serving

    loaded = runtimes.load(predict_options.model)
    results = serving.predict_files(loaded, predict_options.images, predict_options.top_k)
    for result in results:
        if "error" in result:
            print(f"error: {serving.printable(result['image'])}: {result['error']}", file=sys.stderr)
        elif predict_options.json:
            print(json.dumps(result))
        else:
            print(serving.format_table(result))
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
