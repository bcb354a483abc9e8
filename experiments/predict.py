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
                   "show the photo alone in the manipulation maps (default 0: every pixel shows its class, with the "
                   "model's confidence as its opacity).", lower_bound=0.0, upper_bound=1.0)
common.define_out_flags("Output folder (created).")
flags.mark_flag_as_required("out")
common.define_step_flag()
flags.DEFINE_bool("npy", False, "Also write <stem>.npy, float32 H x W probabilities.")
flags.DEFINE_integer("tile", None, "Interior size in pixels of the tiles every image is processed in (default: one "
                     f"of {', '.join(map(str, tiled.TILE_CHOICES))} by the image's size; a tile compiles once for "
                     "every image size).", lower_bound=1)
flags.DEFINE_integer("max_untiled_pixels", predict.DEFAULT_MAX_UNTILED_PIXELS, "Images up to this many pixels take "
                     "the whole-image pass instead of tiles when it fits the free memory (one compilation per image "
                     "size; 0: every image is tiled).", lower_bound=0)
flags.DEFINE_enum("precision", "float32", config.PRECISIONS, "Computation dtype of the convolutions.")
flags.DEFINE_alias("dtype", "precision")
common.define_compilation_cache_flag()
flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS, "Refuse images with more pixels (decompression "
                     "bombs).", lower_bound=1)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        raise app.UsageError("give at least one IMAGE_OR_FOLDER")
    if not FLAGS.checkpoint and not FLAGS.trace_checkpoint:
        raise app.UsageError("give --checkpoint (forgery masks), --trace_checkpoint (manipulation maps) or both")
    common.use_compilation_cache(FLAGS.compilation_cache)
    return predict.predict_folder(FLAGS.checkpoint or None, argv[1:], FLAGS.out, step=FLAGS.step,
                                  precision=FLAGS.precision, tile=FLAGS.tile,
                                  max_untiled_pixels=FLAGS.max_untiled_pixels, npy=FLAGS.npy,
                                  max_pixels=FLAGS.max_pixels, trace_checkpoint=FLAGS.trace_checkpoint or None,
                                  trace_level=FLAGS.trace_level, trace_threshold=FLAGS.trace_threshold,
                                  overwrite=FLAGS.overwrite)


if __name__ == "__main__":
    common.run(main)
