"""Scores an IMC checkpoint: top-1/3/5/10 at every level and a confusion-matrix image.

  python -m experiments.evaluate_imc --checkpoint DIR --data_dir DIR --split test --samples 3800 --out OUTDIR

Writes OUTDIR/imc_report.json, imc_report.md and confusion_L1.png (confusion_L0.png for a model
trained at level 0), in the trainer's format plus a "run" entry (checkpoint, split, seed, ...).
The samples are the trainer's fixed kind: leaf-balanced manipulated crops of the split's patches
(mantra_jax/eval/imc_eval.py); with --split val and the default seed they are the trainer's own
validation set.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app, flags

from experiments import common

from mantra_jax.eval import imc_eval


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this entry point's flags (kept out of import time so tests can import the module)."""
    fv = flag_values
    flags.DEFINE_string("checkpoint", None, "IMC checkpoint folder (a training run or a saved model).", flag_values=fv)
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which step of a training run.", flag_values=fv)
    flags.DEFINE_string("data_dir", "", "Folder of pristine photos (recursive). Empty: the bundled photos.",
                        flag_values=fv)
    flags.DEFINE_enum("split", "test", ["val", "test"], "Split of the photo folder scored.", flag_values=fv)
    flags.DEFINE_integer("samples", 3800, "Manipulated crops scored (leaf-balanced: 3800 = 10 per leaf).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Evaluation batch size.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("patch", 256, "Pristine patch size of the photo index (the trainer's: 256).",
                         lower_bound=8, flag_values=fv)
    flags.DEFINE_integer("crop", 128, "Crop scored inside each manipulated patch (the trainer's default: 128).",
                         lower_bound=8, flag_values=fv)
    flags.DEFINE_integer("seed", imc_eval.TRAINER_VAL_SEED, "Seed of the sample set (default: the trainer's "
                         "validation seed).", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)


def run(checkpoint: str, data_dir: str, out: str, *, split: str = "test", samples: int = 3800,
        batch_size: int = 64, patch: int = 256, crop: int = 128, seed: int = imc_eval.TRAINER_VAL_SEED,
        which: str = "best", precision: str = "float32", progress: bool = True) -> dict:
    """Loads the checkpoint, scores it and writes the report; returns the report's content."""
    import jax.numpy as jnp  # noqa: PLC0415  (JAX and Orbax only when a model is run)

    from mantra_jax.train.reporting import ProgressLine  # noqa: PLC0415
    from mantra_jax.data import bundled, photos  # noqa: PLC0415
    from mantra_jax.train import checkpoint as checkpoint_lib  # noqa: PLC0415

    cfg = checkpoint_lib.read_model_config(checkpoint)
    imc_eval.trained_level(cfg, where=str(checkpoint))  # fails before any photo is read
    folder = data_dir or bundled.default_photo_dir()
    index = photos.build_patch_index(folder, patch=patch)
    cfg, variables = checkpoint_lib.load_model(checkpoint, which=which)
    bar = None

    def progress_fn(done, total):
        nonlocal bar
        bar = bar or ProgressLine(total, f"imc {split}")
        bar.update(done)

    summary, sums, level = imc_eval.evaluate(
        cfg, variables, index, split=split, n_samples=samples, batch_size=batch_size, crop=crop, seed=seed,
        dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision],
        progress=progress_fn if progress else None)
    run_info = {"checkpoint": str(checkpoint), "which": which, "data_dir": str(folder), "split": split,
                "samples": samples, "patch": patch, "crop": crop, "seed": seed, "precision": precision}
    path = imc_eval.write_report(out, summary, sums, level, run=run_info)
    return json.loads(path.read_text())


def main(argv: Sequence[str]) -> None:
    fv = flags.FLAGS
    common.start_evaluation_cli(argv, fv, ("checkpoint", "out"))
    report = run(fv.checkpoint, fv.data_dir, fv.out, split=fv.split, samples=fv.samples, batch_size=fv.batch_size,
                 patch=fv.patch, crop=fv.crop, seed=fv.seed, which=fv.which, precision=fv.precision)
    for j, r in report["levels"].items():
        print(f"level {j} ({r['name']}): " + "  ".join(f"top-{k} {100 * r[f'top{k}']:.1f}%" for k in (1, 3, 5, 10)))
    print(f"report: {fv.out}/imc_report.md")


if __name__ == "__main__":
    define_flags()
    app.run(main)
