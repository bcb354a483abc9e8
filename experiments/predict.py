"""Forgery localisation of images and folders with a checkpoint (mantra_jax/infer/predict.py says what is written).

  python -m experiments.predict --checkpoint DIR --out OUTDIR [--step best] [--npy] IMAGE_OR_FOLDER...

Exit status: 0 when an image was processed, 1 when none was (or a flag was wrong), 2 for a user
error (an unusable checkpoint, an --out that is a file or in use), reported in one line.
"""
from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from experiments import common
from mantra_jax.infer import predict
from mantra_jax.data import images
from mantra_jax.errors import exit_on_user_error
from mantra_jax.nn import config, tiled

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (trained or converted).", required=True)
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
                     "bombs).")


@exit_on_user_error
def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        raise app.UsageError("give at least one IMAGE_OR_FOLDER")
    return predict.predict_folder(FLAGS.checkpoint, argv[1:], FLAGS.out, step=FLAGS.step, precision=FLAGS.precision,
                                  tile=FLAGS.tile, max_untiled_pixels=FLAGS.max_untiled_pixels, npy=FLAGS.npy,
                                  max_pixels=FLAGS.max_pixels)


if __name__ == "__main__":
    app.run(main)
