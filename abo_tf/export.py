"""Export a trained run for LiteRT (TFLite) or ONNX, measured against its SavedModel: `python -m abo_tf.export`.

    python -m abo_tf.export --run runs/demo --format litert-int8
    python -m abo_tf.export --run runs/demo --format onnx --output exports/demo-onnx

Formats: litert (float32), litert-fp16 (float16 weights), litert-int8 (full
integer, calibrated on --calibration-images train images stratified by class),
onnx (tf2onnx, opset 17, checked by onnx.checker). What is exported is the
SavedModel's `serve_pixels` (uint8 [N, S, S, 3] -> probabilities); decoding
and the central crop are the caller's, written down in preprocessing.json and
done by `python -m abo_tf.predict --model FILE`.

Every export is measured on the test split (--split) against the SavedModel:
top-1 agreement, max and mean |dp|, accuracy and macro F1 of both, latency
(batch 1 p50/p95, images/s at batch 32) on this machine's CPU, file sizes:
parity.json and report.md, printed too, with model_card.md. Targets: litert and
onnx max |dp| <= 1e-4 and identical top-1; litert-fp16 top-1 agreement >=
99.5%; litert-int8 >= 98% and macro F1 within 1 point. An export that misses
its target is still written, and the command exits 1 with one line naming the
figure (--allow-degraded: exit 0).
"""

import os
import sys

from abo_tf.common import options
from abo_tf.common.errors import cli_main
from abo_tf.conversion import exporting


@cli_main
def main(argv=None):
    export_options, _ = options.parse(
        exporting.ExportOptions, argv, prog="python -m abo_tf.export", description=__doc__.split("\n\n")[0]
    )
    result = exporting.export(export_options)
    print(exporting.report_markdown(result))
    print(f"wrote {os.path.join(export_options.output_folder(), result['model_file'])}")
    if result["target_misses"] and not export_options.allow_degraded:
        print(
            f"error: {export_options.format} misses its target: {'; '.join(result['target_misses'])}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
