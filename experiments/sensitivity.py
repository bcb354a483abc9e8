"""Sensitivity and robustness of a ManTra-Net checkpoint on synthesised forgeries (paper, Fig. 4).

  python -m experiments.sensitivity --checkpoint DIR [--step best] [--data_dir PHOTOS] --out OUTDIR [--per_param 20]

(a) sensitivity: pixel AUC per IMC manipulation type and parameter (--types / --families select
    a subset; default all 380 leaves) on enhancement forgeries of test-split patches;
(b) robustness: pixel AUC of a mix of splicing, copy-move, removal and enhancement forgeries
    (--kinds) under downscaling, JPEG and Gaussian blur in a band around the forged region's edge.

Writes OUTDIR/sensitivity.csv, sensitivity.png and sensitivity_<family>.png, robustness.csv,
robustness.png and run.json (the checkpoint step scored and why, the model configuration, the
command line and the study's settings), and prints both studies as tables. The photo folder and
the patch size default to the checkpoint's (the trainer's --data_dir and --patch_size in its
flags.txt). Protocol: mantra_jax/eval/sensitivity.py.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence

from absl import app, flags

from experiments import common
from mantra_jax import provenance
from mantra_jax.data import forgeries
from mantra_jax.eval import sensitivity
from mantra_jax.nn import config

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "ManTra-Net checkpoint folder.")
common.define_step_flag()
flags.DEFINE_string("data_dir", None, "Folder of pristine photos (recursive). Default: the folder the checkpoint was "
                    "trained on; empty (or a checkpoint that does not say): the bundled photos.")
common.define_out_flags("Output folder.")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split whose patches are forged.")
flags.DEFINE_integer("patch", None, "Patch size. Default: the trainer's --patch_size, else 256.", lower_bound=16)
flags.DEFINE_integer("per_param", 20, "Forgeries per manipulation type and parameter.", lower_bound=1)
flags.DEFINE_list("types", [], "IMC manipulation types of the sensitivity study (empty: all).")
flags.DEFINE_list("families", [], "IMC families of the sensitivity study (empty: all).")
flags.DEFINE_integer("robust_samples", 200, "Forgeries of the robustness study.", lower_bound=1)
flags.DEFINE_list("kinds", list(forgeries.FORGERY_TYPES), "Forgery kinds of the robustness study, in turn.")
flags.DEFINE_list("downscale_factors", [str(f) for f in sensitivity.DEFAULT_DOWNSCALE_FACTORS], "Downscaling factors.")
flags.DEFINE_list("jpeg_qualities", [str(q) for q in sensitivity.DEFAULT_JPEG_QUALITIES], "JPEG qualities.")
flags.DEFINE_list("blur_kernels", [str(k) for k in sensitivity.DEFAULT_BLUR_KERNELS],
                  "Gaussian kernel sizes of the edge blur.")
flags.DEFINE_integer("edge_band", sensitivity.DEFAULT_EDGE_BAND, "Half width (pixels) of the blurred band around the "
                     "forged region's outline.", lower_bound=1)
flags.DEFINE_bool("sensitivity", True, "Run the sensitivity study.")
flags.DEFINE_bool("robustness", True, "Run the robustness study.")
flags.DEFINE_integer("seed", 0, "Seed of patches, masks and manipulation noise.", lower_bound=0)
flags.DEFINE_integer("batch_size", 8, "Images per forward pass.", lower_bound=1)
flags.DEFINE_enum("precision", "float32", config.PRECISIONS, "Computation dtype.")


def main(argv: Sequence[str]) -> None:
    common.start_evaluation_cli(argv, FLAGS, ("checkpoint", "out"))
    studies = [name for name in ("sensitivity", "robustness") if FLAGS[name].value]
    if not studies:
        raise app.UsageError("nothing to do: both --nosensitivity and --norobustness")
    try:
        factors = [float(f) for f in FLAGS.downscale_factors]
        qualities = [int(q) for q in FLAGS.jpeg_qualities]
        kernels = [int(k) for k in FLAGS.blur_kernels]
    except ValueError as e:
        raise app.UsageError(f"attack levels must be numbers: {e}") from e
    sensitivity.robustness_levels(factors, qualities, kernels)  # bad levels fail before the model loads
    if FLAGS.sensitivity:
        sensitivity.select_leaves(FLAGS.types or None, FLAGS.families or None)
    unknown = [k for k in FLAGS.kinds if k not in forgeries.FORGERY_TYPES]
    if FLAGS.robustness and (unknown or not FLAGS.kinds):
        raise app.UsageError(f"--kinds must be a non-empty subset of {forgeries.FORGERY_TYPES}, got {FLAGS.kinds}")
    with common.output_folder("sensitivity study", FLAGS.checkpoint):
        files, record = sensitivity.evaluate_checkpoint(
            FLAGS.checkpoint, FLAGS.out, data_dir=FLAGS.data_dir, patch=FLAGS.patch, step=FLAGS.step,
            precision=FLAGS.precision, batch_size=FLAGS.batch_size, split=FLAGS.split, per_param=FLAGS.per_param,
            types=FLAGS.types, families=FLAGS.families, robust_samples=FLAGS.robust_samples, kinds=FLAGS.kinds,
            downscale_factors=factors, jpeg_qualities=qualities, blur_kernels=kernels, edge_band=FLAGS.edge_band,
            studies=studies, seed=FLAGS.seed)
    print_summary(files, record)


def print_summary(files: sensitivity.StudyFiles, record: dict) -> None:
    """Per manipulation type (AUC over its parameters) and per attack level, as tables on stdout."""
    print(provenance.describe(record))
    if files.sensitivity_csv is not None:
        with open(files.sensitivity_csv, newline="") as f:
            rows = sensitivity.type_summary(list(csv.DictReader(f)))
        common.print_table(["type", "family", "parameter", "leaves", "AUC mean", "AUC min (at)", "AUC max (at)"],
                           rows, title="\nSensitivity: pixel AUC (mean per image) over each type's parameters")
    if files.robustness_csv is not None:
        with open(files.robustness_csv, newline="") as f:
            number = lambda text: float(text) if text else None  # noqa: E731
            rows = [[r["attack"], r["level"], number(r["auc"]), r["n"], number(r["auc_pooled"])]
                    for r in csv.DictReader(f)]
        common.print_table(["attack", "level", "AUC (mean per image)", "images", "AUC pooled"], rows,
                           title="\nRobustness")
    print("\nfiles: " + ", ".join(str(p) for p in (files.sensitivity_csv, files.robustness_csv, *files.plots)
                                  if p is not None))


if __name__ == "__main__":
    common.run(main)
