"""Exports an end-to-end checkpoint to ONNX and serialized StableHLO, checked against the JAX model.

  python -m experiments.export --checkpoint DIR --out OUTDIR [--formats stablehlo,onnx] [--opset 23]

Writes OUTDIR/model.onnx (jax2onnx; input `input` uint8 N x H x W x 3, output `prob` float32
N x H x W, dynamic N, H, W), OUTDIR/model.stablehlo (jax.export, symbolic N, H, W; load it with
jax.export.deserialize) and OUTDIR/export_check.json (max_abs_diff_onnx, max_abs_diff_stablehlo:
each export against Predictor.predict on random images of odd sizes). Exits non-zero when a
difference reaches --tolerance (1e-4). ONNX needs the optional packages of
requirements-export.txt; `--formats stablehlo` needs JAX only. Formats, metadata and how to
handle large images: mantra_jax/infer/export.py and the README.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import app, flags

from experiments import common
from mantra_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "End-to-end (ManTra-Net) checkpoint folder.")
common.define_out_flags("Output folder.")
flags.DEFINE_list("formats", ["stablehlo", "onnx"], "Formats to export: stablehlo, onnx.")
flags.DEFINE_integer("opset", 23, "ONNX opset.", lower_bound=13)
flags.DEFINE_float("tolerance", 1e-4, "Largest difference of probabilities allowed by the check.", lower_bound=0.0)


def main(argv: Sequence[str]) -> None:
    fv = FLAGS
    common.start_evaluation_cli(argv, fv, ("checkpoint", "out"))
    if not fv.formats or set(fv.formats) - {"stablehlo", "onnx"}:
        raise app.UsageError(f"--formats takes stablehlo and/or onnx, got {','.join(fv.formats)}")
    from mantra_jax.infer import export  # noqa: PLC0415  (JAX only when a model is run)

    with common.output_folder("export", fv.checkpoint, flag_values=fv):
        try:
            report = export.export_checkpoint(fv.checkpoint, fv.out, formats=fv.formats, opset=fv.opset,
                                              tolerance=fv.tolerance, log=lambda text: print(text, file=sys.stderr))
        except export.ExportCheckFailed as e:
            common.fail(f"the export check failed: {e}", status=1)
        except UserError as e:  # a missing, unusable or wrong-kind checkpoint, a missing package
            raise UserError(f"cannot export the checkpoint {fv.checkpoint}: {e}") from None
    print(json.dumps({k: report[k] for k in report if k.startswith(("max_abs_diff", "min_height"))}, indent=2))


if __name__ == "__main__":
    common.run(main)
