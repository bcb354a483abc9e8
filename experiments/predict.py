"""Forgery localisation and manipulation tracing of images and folders (mantra_jax/infer/predict.py says what is written).

  python -m experiments.predict --checkpoint DIR --out OUTDIR [--step best] [--npy] IMAGE_OR_FOLDER...
  python -m experiments.predict [--checkpoint DIR] --trace_checkpoint IMC_DIR [--trace_level 1] --out OUTDIR ...

Exit status: 0 when an image was processed, 1 when none was, 2 for a user error (a flag, an
unusable or wrong-kind checkpoint, an --out that is a file or in use), reported in one line
(experiments/common.py, `run`).
"""
from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from experiments import common
from mantra_jax.infer import predict
from mantra_jax.data import images
from mantra_jax.infer import trace
from mantra_jax.nn import config, tiled

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "ManTra-Net checkpoint directory (trained or converted): forgery masks. "
                    "Optional when --trace_checkpoint is given.")
flags.DEFINE_string("trace_checkpoint", None, "IMC checkpoint directory: per-pixel manipulation maps "
                    "(<stem>_trace_L<k>.png, trace_legend_L<k>.png, trace columns of summary.csv).")
flags.DEFINE_integer("trace_level", trace.DEFAULT_LEVEL, "Taxonomy level of the manipulation maps (0: the 7 "
                     "families ... 5: the 380 leaves); at most the level the IMC checkpoint was trained at. --step "
                     "chooses its step too.", lower_bound=0, upper_bound=5)
flags.DEFINE_float("trace_threshold", trace.DEFAULT_THRESHOLD, "Pixels whose top class probability is below this "
                   "are drawn grey in the manipulation maps.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_string("out", None, "Output folder (created).", required=True)
common.define_step_flag()
flags.DEFINE_bool("npy", False, "Also write <stem>.npy, float32 H x W probabilities.")
flags.DEFINE_integer("tile", None, "Tile every image with this interior size in pixels (default: tile only images "
                     f"above --max_untiled_pixels, at {tiled.DEFAULT_TILE}).", lower_bound=1)
flags.DEFINE_integer("max_untiled_pixels", predict.DEFAULT_MAX_UNTILED_PIXELS, "Larger images are processed tile "
                     "by tile, and so are smaller ones whose whole-image pass would not fit the free memory.",
                     lower_bound=0)
flags.DEFINE_enum("precision", "float32", config.PRECISIONS, "Computation dtype of the convolutions.")
flags.DEFINE_alias("dtype", "precision")
flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS, "Refuse images with more pixels (decompression "
                     "bombs).", lower_bound=1)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        raise app.UsageError("give at least one IMAGE_OR_FOLDER")
    if not FLAGS.checkpoint and not FLAGS.trace_checkpoint:
        raise app.UsageError("give --checkpoint (forgery masks), --trace_checkpoint (manipulation maps) or both")
    return predict.predict_folder(FLAGS.checkpoint or None, argv[1:], FLAGS.out, step=FLAGS.step,
                                  precision=FLAGS.precision, tile=FLAGS.tile,
                                  max_untiled_pixels=FLAGS.max_untiled_pixels, npy=FLAGS.npy,
                                  max_pixels=FLAGS.max_pixels, trace_checkpoint=FLAGS.trace_checkpoint or None,
                                  trace_level=FLAGS.trace_level, trace_threshold=FLAGS.trace_threshold)


if __name__ == "__main__":
    common.run(main)
