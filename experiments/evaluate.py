"""Scores a checkpoint on a forgery-localisation benchmark folder.

  python -m experiments.evaluate --checkpoint DIR [--step best] --images DIR --masks DIR [--authentic DIR] --out OUTDIR
  python -m experiments.evaluate --from_stats OUTDIR --out OUTDIR2 --invert_predictions   # no model run

Writes OUTDIR/report.json (its "run" entry: the checkpoint step scored and why, the model
configuration, the command line, the folders), report.md, per_image.csv, panels/ and the per-image
statistics that --from_stats rescores (mantra_jax/eval/evaluate.py); prints the headline metrics as
a table. A user error (a missing or empty folder, an unusable checkpoint, an --out that is a file)
is printed as one line, `error: ...`, and the exit status is 2.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from experiments import common
from mantra_jax import provenance
from mantra_jax.eval import datasets
from mantra_jax.metrics import pixel as pixel_metrics
from mantra_jax.metrics import report
from mantra_jax.eval.evaluate import EvaluationOptions, evaluate_checkpoint, recompute_from_stats

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Model checkpoint folder.")
common.define_step_flag()
flags.DEFINE_string("images", None, "Folder of forged images.")
flags.DEFINE_string("masks", None, "Folder of ground-truth masks.")
flags.DEFINE_string("authentic", None, "Folder of authentic images (enables image-level metrics).")
common.define_out_flags("Output folder.")
flags.DEFINE_string("from_stats", None, "Recompute the report from this earlier output folder's statistics instead of "
                    "running a model.")
flags.DEFINE_enum("preset", None, sorted(datasets.PRESETS), "Benchmark folder layout.")
flags.DEFINE_bool("invert_masks", None, "Masks mark the forgery in black (unset: as the preset says).")
flags.DEFINE_bool("resize_masks", False, "Resize masks of another size to the image (nearest) instead of skipping "
                  "the image. Right only for images that were scaled: a mask of a cropped image is misplaced "
                  "(check a few panels, or use masks made at the image's size).")
flags.DEFINE_bool("negate_rule", True, "The paper's rule: negate the prediction for the AUC when over 50% of the "
                  "ground truth is forged.")
flags.DEFINE_bool("invert_predictions", False, "Per-image max over p and 1-p for F1 and IoU.")
flags.DEFINE_integer("bins", pixel_metrics.DEFAULT_BINS, "Histogram bins over [0, 1] (a power of two).")
flags.DEFINE_integer("max_images", 0, "Score only the first N forged and N authentic images (0: all).", lower_bound=0)
flags.DEFINE_integer("n_panels", 4, "Best and worst images drawn as panels.", lower_bound=0)
common.define_compilation_cache_flag()
flags.DEFINE_enum("image_score", "mean", ["mean", "max"], "Image score for image-level metrics.")


def _evaluate() -> dict:
    options = EvaluationOptions(
        preset=FLAGS.preset, invert_masks=FLAGS.invert_masks, resize_masks=FLAGS.resize_masks,
        negate_rule=FLAGS.negate_rule, invert_predictions=FLAGS.invert_predictions,
        bins=pixel_metrics.check_bins(FLAGS.bins), max_images=FLAGS.max_images, n_panels=FLAGS.n_panels,
        image_score=FLAGS.image_score)
    if FLAGS.from_stats:
        return recompute_from_stats(FLAGS.from_stats, FLAGS.out, options)
    missing = [name for name in ("checkpoint", "images", "masks") if not FLAGS[name].value]
    if missing:
        raise app.UsageError(f"missing flags: {', '.join('--' + m for m in missing)} (or use --from_stats)")
    return evaluate_checkpoint(FLAGS.checkpoint, FLAGS.images, FLAGS.masks, FLAGS.out, options,
                               authentic=FLAGS.authentic, step=FLAGS.step)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    common.use_compilation_cache(FLAGS.compilation_cache)
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    if FLAGS.from_stats and Path(FLAGS.from_stats).resolve() == Path(FLAGS.out).resolve():
        raise app.UsageError("--out must be another folder than --from_stats (whose statistics it reads)")
    with common.output_folder("evaluation", FLAGS.checkpoint if not FLAGS.from_stats else None):
        summary = _evaluate()
    run_info = summary.get("run", {})
    title = provenance.describe(run_info) if "step" in run_info else "Forgery localisation benchmark"
    rows = [[label, summary[key]] for key, label in report.HEADLINE_METRICS if key in summary]
    rows += [[key, summary[key]] for key in ("n_images", "n_skipped", "n_authentic") if key in summary]
    common.print_table(["metric", "value"], rows, title=title)
    print(f"report: {Path(FLAGS.out) / 'report.md'}")


if __name__ == "__main__":
    common.run(main)
