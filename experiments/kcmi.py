"""The paper's KCMI feature test: camera-model identification by k-NN on mean Featex features.

  python -m experiments.kcmi --checkpoint DIR [--step best] --data_dir CAMERAS --out OUTDIR [--k 7 --crop 512 --seed 0]

CAMERAS holds one sub-folder of photos per camera model. Works with any checkpoint (IMC or
ManTra-Net): only its Featex is used. Writes OUTDIR/kcmi_report.json (with a "run" entry: the
checkpoint step and why, the model configuration, the command line), kcmi_report.md and
kcmi_confusion.png, and prints the accuracy per camera. Protocol and conventions:
mantra_jax/eval/kcmi.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from experiments import common

from mantra_jax import provenance
from mantra_jax.eval import kcmi


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this entry point's flags (kept out of import time so tests can import the module)."""
    fv = flag_values
    flags.DEFINE_string("checkpoint", None, "Checkpoint folder (IMC or ManTra-Net).", flag_values=fv)
    common.define_step_flag(fv)
    flags.DEFINE_string("data_dir", None, "Folder with one sub-folder of photos per camera model.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)
    flags.DEFINE_integer("k", kcmi.DEFAULT_K, "Neighbours voting.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("crop", kcmi.DEFAULT_CROP, "Side of the centre window averaged (smaller photos: whole).",
                         lower_bound=8, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the split into halves.", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("metric", "cosine", list(kcmi.METRICS), "cosine (L2-normalised features) or euclidean (raw).",
                      flag_values=fv)
    flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.", flag_values=fv)


def run(checkpoint: str, data_dir: str, out: str, *, k: int = kcmi.DEFAULT_K, crop: int = kcmi.DEFAULT_CROP,
        seed: int = 0, metric: str = "cosine", step: provenance.StepChoice = provenance.DEFAULT_STEP,
        precision: str = "float32", progress: bool = True) -> dict:
    """Checks the folder, loads the checkpoint, runs the test and writes the report."""
    import jax.numpy as jnp  # noqa: PLC0415  (JAX and Orbax only when a model is run)

    from mantra_jax import checkpoint as checkpoint_lib  # noqa: PLC0415
    from mantra_jax.metrics.progress import ProgressLine  # noqa: PLC0415

    kcmi.list_camera_images(data_dir)  # a bad folder fails before the model is loaded
    cfg, variables, record = checkpoint_lib.load_model_at(checkpoint, step)
    feature_fn = kcmi.featex_feature_fn(cfg, variables, crop=crop,
                                        dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision])
    bar = None

    def progress_fn(done, total):
        nonlocal bar
        bar = bar or ProgressLine(total, "kcmi features")
        bar.update(done)

    result = kcmi.run_kcmi(feature_fn, data_dir, k=k, seed=seed, metric=metric,
                           progress=progress_fn if progress else None)
    result["run"] = dict(record, crop=crop, precision=precision)
    kcmi.write_report(out, result, run=result["run"])
    return result


def print_summary(result: dict, out: str) -> None:
    """Accuracy per camera as a table on stdout, with the step scored."""
    title = (f"KCMI accuracy {100 * result['accuracy']:.1f} % over {result['n_test']} photos of "
             f"{result['n_cameras']} cameras (chance {100 * result['chance_accuracy']:.1f} %, majority "
             f"{100 * result['majority_accuracy']:.1f} %, balanced {100 * result['balanced_accuracy']:.1f} %; "
             f"{result['k']}-NN, {result['metric']})\n{provenance.describe(result['run'])}")
    rows = [[name, r["n_images"], r["n_fit"], r["n_test"], f"{100 * r['accuracy']:.1f}"]
            for name, r in result["per_camera"].items()]
    common.print_table(["camera", "photos", "fitted", "scored", "accuracy %"], rows, title=title)
    print(f"report: {Path(out) / 'kcmi_report.md'}")


def main(argv: Sequence[str]) -> None:
    fv = flags.FLAGS
    common.start_evaluation_cli(argv, fv, ("checkpoint", "data_dir", "out"))
    result = run(fv.checkpoint, fv.data_dir, fv.out, k=fv.k, crop=fv.crop, seed=fv.seed, metric=fv.metric,
                 step=fv.step, precision=fv.precision)
    print_summary(result, fv.out)


if __name__ == "__main__":
    define_flags()
    app.run(main)
