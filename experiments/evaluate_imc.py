"""Scores an IMC checkpoint: top-1/3/5/10 at every level and a confusion-matrix image.

  python -m experiments.evaluate_imc --checkpoint DIR [--step best] [--data_dir DIR] --split test --out OUTDIR

Writes OUTDIR/imc_report.json, imc_report.md and confusion_L1.png (confusion_L0.png for a model
trained at level 0), in the trainer's format plus a "run" entry: the checkpoint step scored and
why, the model configuration, the command line, the split, how many of its photos and patches the
samples used, the crop, seed, .... The samples are the trainer's fixed kind: leaf-balanced
manipulated crops of the split's patches (mantra_jax/eval/imc_eval.py); with --split val and the
default seed they are the trainer's own validation set.

What the checkpoint knows comes from it (the trainer's flags.txt) unless a flag says otherwise:
the crop the model was trained at (--crop), the photo folder (--data_dir) and the sample count
(--samples, from the trainer's --val_samples). A checkpoint without flags.txt (converted weights)
gets the trainer's defaults: crop 128, 3800 samples, the bundled photos.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import flags

from experiments import common
from mantra_jax import provenance
from mantra_jax.eval import imc_eval
from mantra_jax.nn import config

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "IMC checkpoint folder (a training run or a saved model).")
common.define_step_flag()
flags.DEFINE_string("data_dir", None, "Folder of pristine photos (recursive). Default: the folder the checkpoint was "
                    "trained on; empty (or a checkpoint that does not say): the bundled photos.")
flags.DEFINE_enum("split", "test", ["val", "test"], "Split of the photo folder scored.")
flags.DEFINE_integer("samples", None, "Manipulated crops scored (leaf-balanced: 3800 = 10 per leaf). Default: the "
                     f"trainer's --val_samples, else {imc_eval.DEFAULT_SAMPLES}.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Evaluation batch size.", lower_bound=1)
flags.DEFINE_integer("patch", 256, "Pristine patch size of the photo index (the trainer's: 256).", lower_bound=8)
flags.DEFINE_integer("crop", None, "Crop scored inside each manipulated patch. Default: the crop the checkpoint was "
                     f"trained at, else {imc_eval.DEFAULT_CROP}.", lower_bound=8)
flags.DEFINE_integer("seed", imc_eval.TRAINER_VAL_SEED, "Seed of the sample set (default: the trainer's validation "
                     "seed).", lower_bound=0)
flags.DEFINE_enum("precision", "float32", config.PRECISIONS, "Computation dtype.")
common.define_out_flags("Output folder.")


def print_summary(report: dict, out: str) -> None:
    """The levels as a table on stdout, with the step scored and the photos used."""
    r = report["run"]
    title = (f"IMC {r['split']} split: {r['samples']} samples from {r['n_patches_used']} patches of "
             f"{r['n_photos_used']} photos (the split has {r['n_patches_in_split']} patches of "
             f"{r['n_photos_in_split']} photos), crop {r['crop']}\n{provenance.describe(r)}")
    rows = [[j, level["name"], level["classes"], *(f"{100 * level[f'top{k}']:.1f}" for k in (1, 3, 5, 10))]
            for j, level in report["levels"].items()]
    header = ["level", "name (paper's)", "classes (this taxonomy's)", "top-1 %", "top-3 %", "top-5 %", "top-10 %"]
    common.print_table(header, rows, title=title)
    print(f"\n{report['level_names']}\nreport: {Path(out) / 'imc_report.md'}")


def main(argv: Sequence[str]) -> None:
    common.start_evaluation_cli(argv, FLAGS, ("checkpoint", "out"))
    with common.output_folder("IMC evaluation", FLAGS.checkpoint):
        report = imc_eval.evaluate_checkpoint(
            FLAGS.checkpoint, FLAGS.data_dir, FLAGS.out, split=FLAGS.split, samples=FLAGS.samples,
            batch_size=FLAGS.batch_size, patch=FLAGS.patch, crop=FLAGS.crop, seed=FLAGS.seed, step=FLAGS.step,
            precision=FLAGS.precision)
    print_summary(report, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
