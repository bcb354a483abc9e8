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
import json
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from experiments import common

from mantra_jax import provenance
from mantra_jax.data import forgeries
from mantra_jax.eval import sensitivity

# This command's setting <- the trainer's flag of the same meaning (experiments/mantranet.py).
TRAINER_FLAGS = {"data_dir": "data_dir", "patch": "patch_size"}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this entry point's flags (kept out of import time so tests can import the module)."""
    fv = flag_values
    flags.DEFINE_string("checkpoint", None, "ManTra-Net checkpoint folder.", flag_values=fv)
    common.define_step_flag(fv)
    flags.DEFINE_string("data_dir", None, "Folder of pristine photos (recursive). Default: the folder the "
                        "checkpoint was trained on; empty (or a checkpoint that does not say): the bundled photos.",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)
    flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split whose patches are forged.", flag_values=fv)
    flags.DEFINE_integer("patch", None, "Patch size. Default: the trainer's --patch_size, else 256.", lower_bound=16,
                         flag_values=fv)
    flags.DEFINE_integer("per_param", 20, "Forgeries per manipulation type and parameter.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_list("types", [], "IMC manipulation types of the sensitivity study (empty: all).", flag_values=fv)
    flags.DEFINE_list("families", [], "IMC families of the sensitivity study (empty: all).", flag_values=fv)
    flags.DEFINE_integer("robust_samples", 200, "Forgeries of the robustness study.", lower_bound=1, flag_values=fv)
    flags.DEFINE_list("kinds", list(forgeries.FORGERY_TYPES), "Forgery kinds of the robustness study, in turn.",
                      flag_values=fv)
    flags.DEFINE_list("downscale_factors", [str(f) for f in sensitivity.DEFAULT_DOWNSCALE_FACTORS],
                      "Downscaling factors.", flag_values=fv)
    flags.DEFINE_list("jpeg_qualities", [str(q) for q in sensitivity.DEFAULT_JPEG_QUALITIES], "JPEG qualities.",
                      flag_values=fv)
    flags.DEFINE_list("blur_kernels", [str(k) for k in sensitivity.DEFAULT_BLUR_KERNELS],
                      "Gaussian kernel sizes of the edge blur.", flag_values=fv)
    flags.DEFINE_integer("edge_band", sensitivity.DEFAULT_EDGE_BAND, "Half width (pixels) of the blurred band "
                         "around the forged region's outline.", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("sensitivity", True, "Run the sensitivity study.", flag_values=fv)
    flags.DEFINE_bool("robustness", True, "Run the robustness study.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of patches, masks and manipulation noise.", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "Images per forward pass.", lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.", flag_values=fv)


def run(predict_batch, index, out: str, *, split: str = "test", per_param: int = 20, types=(), families=(),
        robust_samples: int = 200, kinds=forgeries.FORGERY_TYPES,
        downscale_factors=sensitivity.DEFAULT_DOWNSCALE_FACTORS, jpeg_qualities=sensitivity.DEFAULT_JPEG_QUALITIES,
        blur_kernels=sensitivity.DEFAULT_BLUR_KERNELS, edge_band: int = sensitivity.DEFAULT_EDGE_BAND,
        run_sensitivity: bool = True, run_robustness: bool = True, seed: int = 0, batch_size: int = 8,
        progress: bool = True, metadata: dict | None = None) -> sensitivity.StudyFiles:
    """Both studies with any batch predictor on a patch index; writes CSV files, plots, run.json."""
    from mantra_jax.metrics.progress import ProgressLine  # noqa: PLC0415

    if not (run_sensitivity or run_robustness):
        raise app.UsageError("nothing to do: both --nosensitivity and --norobustness")

    def bar(label):
        line = None

        def update(done, total):
            nonlocal line
            line = line or ProgressLine(total, label)
            line.update(done)

        return update if progress else None

    levels = sensitivity.robustness_levels(downscale_factors, jpeg_qualities, blur_kernels)  # checked up front
    leaves = sensitivity.select_leaves(list(types) or None, list(families) or None) if run_sensitivity else []
    sens_rows = rob_rows = None
    if run_sensitivity:
        patches = sensitivity.pristine_patches(index, per_param, seed=seed, split=split, tag=1)
        sens_rows = sensitivity.run_sensitivity(predict_batch, patches, leaves, seed=seed, batch_size=batch_size,
                                                progress=bar("sensitivity"))
    if run_robustness:
        patches = sensitivity.pristine_patches(index, robust_samples, seed=seed, split=split, tag=2)
        rob_rows = sensitivity.run_robustness(
            predict_batch, patches, seed=seed, kinds=list(kinds), downscale_factors=levels.get("downscale", ()),
            jpeg_qualities=levels.get("jpeg", ()), blur_kernels=levels.get("edge_blur", ()), half_width=edge_band,
            batch_size=batch_size, progress=bar("robustness"))
    files = sensitivity.write_outputs(out, sens_rows, rob_rows)
    run_info = dict(metadata or {}, data_dir=str(index.root), split=split, patch=index.patch_size,
                    per_param=per_param, n_leaves=len(leaves), robust_samples=robust_samples, kinds=list(kinds),
                    edge_band=edge_band, seed=seed)
    (Path(out) / "run.json").write_text(json.dumps(run_info, indent=1))
    return files


def main(argv: Sequence[str]) -> None:
    fv = flags.FLAGS
    common.start_evaluation_cli(argv, fv, ("checkpoint", "out"))
    try:
        factors = [float(f) for f in fv.downscale_factors]
        qualities = [int(q) for q in fv.jpeg_qualities]
        kernels = [int(k) for k in fv.blur_kernels]
    except ValueError as e:
        raise app.UsageError(f"attack levels must be numbers: {e}") from e
    sensitivity.robustness_levels(factors, qualities, kernels)  # bad levels fail before the model loads
    if fv.sensitivity:
        sensitivity.select_leaves(fv.types or None, fv.families or None)
    unknown = [k for k in fv.kinds if k not in forgeries.FORGERY_TYPES]
    if fv.robustness and (unknown or not fv.kinds):
        raise app.UsageError(f"--kinds must be a non-empty subset of {forgeries.FORGERY_TYPES}, got {fv.kinds}")

    from mantra_jax.data import bundled, photos  # noqa: PLC0415
    from mantra_jax.predict import Predictor  # noqa: PLC0415  (JAX only when a model is run)

    settings, taken = common.settings_from_checkpoint(
        fv.checkpoint, {"data_dir": fv.data_dir, "patch": fv.patch}, TRAINER_FLAGS, {"data_dir": "", "patch": 256})
    folder = settings["data_dir"] or bundled.default_photo_dir()
    index = photos.build_patch_index(folder, patch=settings["patch"])
    predictor = Predictor.from_checkpoint(fv.checkpoint, step=fv.step, dtype=fv.precision)
    if fv.batch_size > 1:
        predict_batch = sensitivity.model_batch_predictor(predictor.cfg, predictor.variables,
                                                          batch_size=fv.batch_size, dtype=predictor.dtype)
    else:
        predict_batch = sensitivity.per_image(predictor.predict)
    files = run(predict_batch, index, fv.out, split=fv.split, per_param=fv.per_param, types=fv.types,
                families=fv.families, robust_samples=fv.robust_samples, kinds=fv.kinds, downscale_factors=factors,
                jpeg_qualities=qualities, blur_kernels=kernels, edge_band=fv.edge_band,
                run_sensitivity=fv.sensitivity, run_robustness=fv.robustness, seed=fv.seed, batch_size=fv.batch_size,
                metadata=dict(predictor.provenance, precision=fv.precision, settings_from_checkpoint=taken))
    print_summary(files, predictor.provenance)


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
    define_flags()
    app.run(main)
