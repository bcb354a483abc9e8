"""The paper's KCMI feature test: camera-model identification by k-NN on mean Featex features.

  python -m experiments.kcmi --checkpoint DIR --data_dir CAMERAS --out OUTDIR [--k 7 --crop 512 --seed 0]

CAMERAS holds one sub-folder of photos per camera model. Works with any checkpoint (IMC or
ManTra-Net): only its Featex is used. Writes OUTDIR/kcmi_report.json, kcmi_report.md and
kcmi_confusion.png. Protocol and conventions: mantra_jax/eval/kcmi.py.
"""
from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from experiments import common

from mantra_jax.eval import kcmi


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this entry point's flags (kept out of import time so tests can import the module)."""
    fv = flag_values
    flags.DEFINE_string("checkpoint", None, "Checkpoint folder (IMC or ManTra-Net).", flag_values=fv)
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which step of a training run.", flag_values=fv)
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
        seed: int = 0, metric: str = "cosine", which: str = "best", precision: str = "float32",
        progress: bool = True) -> dict:
    """Checks the folder, loads the checkpoint, runs the test and writes the report."""
    import jax.numpy as jnp  # noqa: PLC0415  (JAX and Orbax only when a model is run)

    from mantra_jax.train.reporting import ProgressLine  # noqa: PLC0415
    from mantra_jax.train import checkpoint as checkpoint_lib  # noqa: PLC0415

    kcmi.list_camera_images(data_dir)  # a bad folder fails before the model is loaded
    cfg, variables = checkpoint_lib.load_model(checkpoint, which=which)
    feature_fn = kcmi.featex_feature_fn(cfg, variables, crop=crop,
                                        dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision])
    bar = None

    def progress_fn(done, total):
        nonlocal bar
        bar = bar or ProgressLine(total, "kcmi features")
        bar.update(done)

    result = kcmi.run_kcmi(feature_fn, data_dir, k=k, seed=seed, metric=metric,
                           progress=progress_fn if progress else None)
    kcmi.write_report(out, result, run={"checkpoint": str(checkpoint), "which": which, "crop": crop,
                                        "precision": precision})
    return result


def main(argv: Sequence[str]) -> None:
    fv = flags.FLAGS
    common.start_evaluation_cli(argv, fv, ("checkpoint", "data_dir", "out"))
    result = run(fv.checkpoint, fv.data_dir, fv.out, k=fv.k, crop=fv.crop, seed=fv.seed, metric=fv.metric,
                 which=fv.which, precision=fv.precision)
    print(f"KCMI accuracy {100 * result['accuracy']:.1f} % over {result['n_test']} photos of "
          f"{result['n_cameras']} cameras (chance {100 * result['chance_accuracy']:.1f} %); "
          f"report: {fv.out}/kcmi_report.md")


if __name__ == "__main__":
    define_flags()
    app.run(main)
