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

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from absl import app, flags

from experiments import common

from mantra_jax import provenance
from mantra_jax.eval import imc_eval
from mantra_jax.metrics import imc as imc_metrics

# This command's setting <- the trainer's flag of the same meaning (experiments/imc385.py).
TRAINER_FLAGS = {"crop": "crop", "samples": "val_samples", "data_dir": "data_dir"}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this entry point's flags (kept out of import time so tests can import the module)."""
    fv = flag_values
    flags.DEFINE_string("checkpoint", None, "IMC checkpoint folder (a training run or a saved model).", flag_values=fv)
    common.define_step_flag(fv)
    flags.DEFINE_string("data_dir", None, "Folder of pristine photos (recursive). Default: the folder the "
                        "checkpoint was trained on; empty (or a checkpoint that does not say): the bundled photos.",
                        flag_values=fv)
    flags.DEFINE_enum("split", "test", ["val", "test"], "Split of the photo folder scored.", flag_values=fv)
    flags.DEFINE_integer("samples", None, "Manipulated crops scored (leaf-balanced: 3800 = 10 per leaf). Default: "
                         f"the trainer's --val_samples, else {imc_eval.DEFAULT_SAMPLES}.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Evaluation batch size.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("patch", 256, "Pristine patch size of the photo index (the trainer's: 256).",
                         lower_bound=8, flag_values=fv)
    flags.DEFINE_integer("crop", None, "Crop scored inside each manipulated patch. Default: the crop the checkpoint "
                         f"was trained at, else {imc_eval.DEFAULT_CROP}.", lower_bound=8, flag_values=fv)
    flags.DEFINE_integer("seed", imc_eval.TRAINER_VAL_SEED, "Seed of the sample set (default: the trainer's "
                         "validation seed).", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)


def run(checkpoint: str, data_dir: Optional[str], out: str, *, split: str = "test", samples: Optional[int] = None,
        batch_size: int = 64, patch: int = 256, crop: Optional[int] = None, seed: int = imc_eval.TRAINER_VAL_SEED,
        step: provenance.StepChoice = provenance.DEFAULT_STEP, precision: str = "float32",
        progress: bool = True) -> dict:
    """Loads the checkpoint, scores it and writes the report; returns the report's content.

    `data_dir`, `samples` and `crop` left None come from the checkpoint (see the module docstring)."""
    import jax.numpy as jnp  # noqa: PLC0415  (JAX and Orbax only when a model is run)

    from mantra_jax import checkpoint as checkpoint_lib  # noqa: PLC0415
    from mantra_jax.data import bundled, photos  # noqa: PLC0415
    from mantra_jax.metrics.progress import ProgressLine  # noqa: PLC0415

    cfg = checkpoint_lib.read_model_config(checkpoint)
    imc_eval.trained_level(cfg, where=str(checkpoint))  # fails before any photo is read
    settings, taken = common.settings_from_checkpoint(
        checkpoint, {"crop": crop, "samples": samples, "data_dir": data_dir}, TRAINER_FLAGS,
        {"crop": imc_eval.DEFAULT_CROP, "samples": imc_eval.DEFAULT_SAMPLES, "data_dir": ""})
    folder = settings["data_dir"] or bundled.default_photo_dir()
    index = photos.build_patch_index(folder, patch=patch)
    cfg, variables, record = checkpoint_lib.load_model_at(checkpoint, step)
    bar = None

    def progress_fn(done, total):
        nonlocal bar
        bar = bar or ProgressLine(total, f"imc {split}")
        bar.update(done)

    summary, sums, level = imc_eval.evaluate(
        cfg, variables, index, split=split, n_samples=settings["samples"], batch_size=batch_size,
        crop=settings["crop"], seed=seed, dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision],
        progress=progress_fn if progress else None)
    usage = imc_eval.sample_usage(index, split=split, n_samples=settings["samples"], seed=seed, crop=settings["crop"])
    run_info = dict(record, data_dir=str(folder), split=split, samples=settings["samples"], **usage, patch=patch,
                    crop=settings["crop"], seed=seed, precision=precision, settings_from_checkpoint=taken)
    path = imc_metrics.write_report(out, summary, sums, level, run=run_info)
    return json.loads(path.read_text())


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
    fv = flags.FLAGS
    common.start_evaluation_cli(argv, fv, ("checkpoint", "out"))
    report = run(fv.checkpoint, fv.data_dir, fv.out, split=fv.split, samples=fv.samples, batch_size=fv.batch_size,
                 patch=fv.patch, crop=fv.crop, seed=fv.seed, step=fv.step, precision=fv.precision)
    print_summary(report, fv.out)


if __name__ == "__main__":
    define_flags()
    app.run(main)
