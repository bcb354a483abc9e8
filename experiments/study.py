"""The small-scale study: the paper's Table 4 and Table 7 directions on real photos, scored on COVERAGE.

  python -m experiments.study --flagfile=experiments/flags/study.flags \
      --pristine_dir=../shared/data/pristine --coverage_dir=../shared/data/coverage --out=runs/study

Runs, in order, each in its own work directory under --out (a rerun continues where it stopped:
a finished run has its final_metrics.json, an unfinished one resumes from its checkpoint, a
finished evaluation is not redone):

  imc_hl0, imc_hl5                 IMC pretraining at the family level and at the 380 leaves
  e2e_random, e2e_half_freeze,     end-to-end ManTra-Net from random weights, and from the HL5
  e2e_half_random                  run's Featex frozen / trained at a lower rate (Table 7)
  imc_eval                         top-k at every level on the pristine test split
  coverage                         every end-to-end model and the no-training baseline on COVERAGE,
                                   with the 9 size-mismatched pairs excluded ("strict") and with
                                   their fitted masks ("all 100")
  results                          RESULTS.md and the figures (learning curves)

Checkpoints are chosen by synthetic validation loss only (the trainers' best step); nothing is
chosen by its COVERAGE score. The trainers are the ordinary commands, run as subprocesses with
the flagfiles named by --imc_flagfile / --e2e_flagfile; the command lines are in RESULTS.md.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
TRAINER = True  # runs trainers: SIGTERM exits 75 (rerun to continue), as a trainer's does
flags.DEFINE_string("out", "runs/study", "Study folder: one work directory per run, eval/, RESULTS.md.")
flags.DEFINE_string("pristine_dir", None, "Folder of pristine photos (the subsets below are its sub-folders).")
flags.DEFINE_list("pristine_subsets", ["kodak24", "cbsd68", "mcmaster18"],
                  "Sub-folders of --pristine_dir used for training (empty: the whole folder).")
flags.DEFINE_string("coverage_dir", None, "The COVERAGE folder (image/, mask/, mask_aligned/).")
flags.DEFINE_string("imc_flagfile", "experiments/flags/study_imc.flags", "Flags of the IMC runs.")
flags.DEFINE_string("e2e_flagfile", "experiments/flags/study_e2e.flags", "Flags of the end-to-end runs.")
flags.DEFINE_integer("seed", 0, "Seed of every run (data and initialisation).", lower_bound=0)
flags.DEFINE_list("parts", ["imc_hl0", "imc_hl5", "e2e_random", "e2e_half_freeze", "e2e_half_random",
                            "imc_eval", "coverage", "diagnose", "results", "package"],
                  "Parts to run, in this order.")
flags.DEFINE_integer("imc_eval_samples", 3800, "Manipulated test crops per IMC evaluation (10 per leaf).",
                     lower_bound=1)
flags.DEFINE_string("package_dir", "checkpoints", "Where the package part writes mantranet_small/ and imc_small/.")
flags.DEFINE_string("package_e2e", "", "Run packaged as mantranet_small (empty: the end-to-end run with the best "
                    "synthetic validation AUC).")
flags.DEFINE_string("package_imc", "", "Run packaged as imc_small (empty: imc_hl5).")
flags.DEFINE_integer("max_images", 0, "COVERAGE images scored per set (0: all; for a quick check).", lower_bound=0)

TRAIN_RUNS = {
    "imc_hl0": ("experiments.imc385", "imc", ["--level=0"]),
    "imc_hl5": ("experiments.imc385", "imc", ["--level=5"]),
    "e2e_random": ("experiments.mantranet", "e2e", ["--init=random"]),
    "e2e_half_freeze": ("experiments.mantranet", "e2e", ["--init=half_freeze", "--imc_checkpoint={imc_hl5}"]),
    "e2e_half_random": ("experiments.mantranet", "e2e", ["--init=half_random", "--imc_checkpoint={imc_hl5}"]),
}
E2E_RUNS = [name for name, (module, *_) in TRAIN_RUNS.items() if module == "experiments.mantranet"]
IMC_RUNS = [name for name, (module, *_) in TRAIN_RUNS.items() if module == "experiments.imc385"]
BASELINE = "baseline_noise"
STRICT_EXCLUDED = (41, 48, 55, 56, 57, 58, 59, 61, 95)  # COVERAGE pairs whose released masks mismatch


def _out() -> Path:
    return Path(FLAGS.out)


def _log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _commands() -> dict:
    """name -> the command line of every training run (what RESULTS.md prints)."""
    out = _out()
    commands = {}
    for name, (module, kind, extra) in TRAIN_RUNS.items():
        flagfile = FLAGS.imc_flagfile if kind == "imc" else FLAGS.e2e_flagfile
        commands[name] = [sys.executable, "-m", module, f"--flagfile={flagfile}", f"--workdir={out / name}",
                          f"--data_dir={out / 'data' / 'pristine'}", f"--seed={FLAGS.seed}"] + [
            e.format(imc_hl5=out / "imc_hl5") for e in extra]
    return commands


# --------------------------------------------------------------------------------------------
# Data: the training photos and COVERAGE's two mask sets, as folders of links (nothing copied)
# --------------------------------------------------------------------------------------------
def prepare_data() -> None:
    from mantra_jax.study import runs

    runs.link_subsets(FLAGS.pristine_dir, _out() / "data" / "pristine", FLAGS.pristine_subsets)
    if FLAGS.coverage_dir:
        runs.link_coverage_masks(FLAGS.coverage_dir, _out() / "data" / "coverage_masks_all")


# --------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------
def run_training(name: str) -> None:
    workdir = _out() / name
    if (workdir / "final_metrics.json").exists():
        _log(f"{name}: finished earlier")
        return
    if name in ("e2e_half_freeze", "e2e_half_random") and not (_out() / "imc_hl5" / "final_metrics.json").exists():
        raise app.UsageError(f"{name} needs the finished imc_hl5 run first")
    from mantra_jax.study import runs

    runs.run_training(name, workdir, _commands()[name], _log)


# --------------------------------------------------------------------------------------------
# Evaluations
# --------------------------------------------------------------------------------------------
def run_imc_eval() -> None:
    for name in IMC_RUNS:
        out = _out() / "eval" / name
        if (out / "imc_report.json").exists():
            continue
        if not (_out() / name / "final_metrics.json").exists():
            _log(f"imc_eval {name}: not trained yet, skipped")
            continue
        crop = _flag_of(_out() / name, "crop")
        command = [sys.executable, "-m", "experiments.evaluate_imc", f"--checkpoint={_out() / name}",
                   f"--data_dir={_out() / 'data' / 'pristine'}", "--split=test", f"--crop={crop}",
                   f"--samples={FLAGS.imc_eval_samples}", f"--out={out}", "--overwrite"]  # an interrupted attempt
        _log(f"imc_eval {name}: {' '.join(command)}")
        subprocess.run(command, check=True)


def _flag_of(workdir: Path, name: str) -> str:
    for line in (workdir / "flags.txt").read_text().splitlines():
        if line.startswith(f"--{name}="):
            return line.split("=", 1)[1]
    raise ValueError(f"{workdir / 'flags.txt'}: no --{name}")


def run_coverage() -> None:
    if not FLAGS.coverage_dir:
        raise app.UsageError("--coverage_dir is required for the coverage part")
    from mantra_jax.eval.evaluate import EvaluationOptions, run_evaluation
    from mantra_jax.eval import baselines, datasets, diagnose

    coverage = Path(FLAGS.coverage_dir)
    authentic = datasets.list_authentic_images(coverage / "image", preset="coverage")
    options = EvaluationOptions(preset="coverage", max_images=FLAGS.max_images)
    for name in E2E_RUNS + [BASELINE]:
        if name != BASELINE and not (_out() / name / "final_metrics.json").exists():
            _log(f"coverage {name}: not trained yet, skipped")
            continue
        cached = source = None  # the model is loaded once, for the first mask set still to score
        for mask_set, masks in (("all", _out() / "data" / "coverage_masks_all"), ("strict", coverage / "mask")):
            out = _out() / "eval" / name / f"coverage_{mask_set}"
            if (out / "report.json").exists():
                continue
            if cached is None:
                if name == BASELINE:
                    predict_fn, source = baselines.noise_inconsistency, "noise_inconsistency (no training)"
                else:
                    from mantra_jax.infer.predict import Predictor

                    predict_fn, source = Predictor.from_checkpoint(_out() / name).predict, str(_out() / name)
                cached = diagnose.CachedMaps(predict_fn, _out() / "eval" / name / "maps")
            pairs, skipped = datasets.pair_images_and_masks(coverage / "image", masks, preset="coverage")
            _log(f"coverage {name} ({mask_set} masks): {len(pairs)} pairs")
            start = time.time()
            run_evaluation(cached, pairs, authentic, out, options, skipped=skipped,
                           metadata={"model": source, "masks": str(masks), "mask_set": mask_set})
            (out / "seconds.json").write_text(json.dumps({"seconds": time.time() - start}))


def run_diagnose() -> None:
    """What each scored COVERAGE map follows: texture (`texture_auc`) and COVERAGE's three regions
    (`region_aucs`), averaged over the images."""
    from mantra_jax.eval import datasets, diagnose

    coverage = Path(FLAGS.coverage_dir)
    pairs, _ = datasets.pair_images_and_masks(coverage / "image", _out() / "data" / "coverage_masks_all",
                                              preset="coverage")
    pairs = pairs[: FLAGS.max_images or None]
    regions = diagnose.coverage_regions(coverage)
    result = {}
    for name in E2E_RUNS + [BASELINE]:
        folder = _out() / "eval" / name / "maps"
        if not folder.is_dir():
            continue
        result[name] = diagnose.diagnose_maps(diagnose.CachedMaps(None, folder), pairs, regions)
        _log(f"diagnose {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result[name].items()))
    (_out() / "eval" / "diagnose.json").write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------------------------
def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _chosen_validation(workdir: Path) -> dict | None:
    """The validation row of the step a run's checkpoints are read at: the lowest validation loss."""
    val = [r for r in _metrics(workdir) if r.get("kind") == "val"]
    return min(val, key=lambda r: r["val_loss"]) if val else None


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _curves(figures: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for group, names, val_key in (("imc", IMC_RUNS, "val_loss"), ("e2e", E2E_RUNS, "auc_overall")):
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name in names:
            rows = _metrics(_out() / name)
            train = [r for r in rows if r.get("kind") == "train"]
            val = [r for r in rows if r.get("kind") == "val"]
            if not train:
                continue
            ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=name, lw=1)
            ax_val.plot([r["step"] for r in val], [r.get(val_key) for r in val], "o-", label=name, ms=3)
        ax_loss.set(xlabel="step", ylabel="training loss", title=f"{group}: training loss")
        ax_val.set(xlabel="step", ylabel=f"validation {val_key}", title=f"{group}: synthetic validation")
        for ax in (ax_loss, ax_val):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = figures / f"curves_{group}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def write_results() -> Path:
    out = _out()
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    curve_files = _curves(figures)
    commands = _commands()
    lines = ["# Study results (generated by `python -m experiments.study`)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
             f"generated {time.strftime('%Y-%m-%d %H:%M')}.", ""]

    lines += ["## Runs", "", "| run | steps | wall (min) | s / step (incl. compile, validation) | best step |",
              "|---|---|---|---|---|"]
    for name in TRAIN_RUNS:
        final, wall = (out / name / "final_metrics.json").exists(), _read(out / name / "study_wall.json")
        rows = _metrics(out / name)
        steps = max((r["step"] for r in rows if r.get("kind") == "train"), default=None)
        chosen = _chosen_validation(out / name)
        best = chosen["step"] if chosen else None
        minutes = wall["seconds"] / 60 if wall else None
        per_step = wall["seconds"] / steps if wall and steps else None
        lines.append(f"| {name}{'' if final else ' (unfinished)'} | {_fmt(steps)} | {_fmt(minutes, 1)} | "
                     f"{_fmt(per_step, 2)} | {_fmt(best)} |")
    lines += ["", "Command lines:", "", "```"] + ["python " + " ".join(str(c) for c in cmd[1:])
                                                for cmd in commands.values()]
    lines += ["```", ""]

    lines += ["## IMC on the pristine test split (Table 4 direction)", "",
              "| model | " + " | ".join(f"L{j} top-1 / top-5" for j in range(6)) + " |",
              "|---|" + "---|" * 6]
    for name in IMC_RUNS:
        report = _read(out / "eval" / name / "imc_report.json")
        if not report:
            continue
        levels = report.get("levels", {})
        cells = [f"{100 * levels[str(j)]['top1']:.1f} / {100 * levels[str(j)]['top5']:.1f}" if str(j) in levels
                 else "-" for j in range(6)]
        lines.append(f"| {name} ({report.get('n_samples', 0):.0f} crops) | " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## End to end: synthetic validation at the chosen (best validation loss) step", "",
              "| model | " + " | ".join(f"AUC / F1 {t}" for t in ("splicing", "copy_move", "removal", "enhancement"))
              + " | AUC overall |", "|---|" + "---|" * 5]
    for name in E2E_RUNS:
        best = _chosen_validation(out / name)
        if not best:
            continue
        cells = [f"{_fmt(best.get('auc_' + t))} / {_fmt(best.get('f1_' + t))}"
                 for t in ("splicing", "copy_move", "removal", "enhancement")]
        lines.append(f"| {name} (step {best['step']}) | " + " | ".join(cells) + f" | {_fmt(best.get('auc_overall'))} |")
    lines.append("")

    keys = ("pixel_auc_mean", "pixel_auc_pooled", "f1_at_0.5_mean", "f1_best_mean", "image_auc")
    diagnose = _read(out / "eval" / "diagnose.json") or {}
    for mask_set, title in (("strict", "the 91 pairs with released masks of the right size"),
                            ("all", "all 100 pairs (fitted masks for the 9 mismatched ones)")):
        lines += [f"## COVERAGE, {title}", "", "| model | n | " + " | ".join(keys) + " | texture AUC |",
                  "|---|---|" + "---|" * (len(keys) + 1)]
        for name in E2E_RUNS + [BASELINE]:
            report = _read(out / "eval" / name / f"coverage_{mask_set}" / "report.json")
            if report:
                texture = diagnose.get(name, {}).get("texture_auc_mean")
                lines.append(f"| {name} | {report.get('n_images')} | "
                             + " | ".join(_fmt(report.get(k)) for k in keys) + f" | {_fmt(texture)} |")
        lines.append("")

    region_keys = ("forged_vs_background_auc_mean", "copy_vs_background_auc_mean",
                   "paste_vs_background_auc_mean", "forged_vs_copy_auc_mean")
    if diagnose:
        lines += ["## What the COVERAGE maps follow (all 100 pairs, every 3rd pixel)", "",
                  "AUC of each map for COVERAGE's three regions against the background (pasted region, "
                  "its source, the similar genuine object), and for the pasted region against its source; "
                  "texture: textured against flat pixels.", "",
                  "| model | n | forged | copy | similar object | forged vs copy | texture |", "|---|---|---|---|---|---|---|"]
        for name, row in diagnose.items():
            lines.append(f"| {name} | {row.get('n_images')} | " + " | ".join(_fmt(row.get(k)) for k in region_keys)
                         + f" | {_fmt(row.get('texture_auc_mean'))} |")
        lines.append("")

    lines += ["## Figures", ""] + [f"![{f}](figures/{f})" for f in curve_files] + [""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines))
    _log(f"wrote {path}")
    return path


# --------------------------------------------------------------------------------------------
# The shipped small models: parameters and configuration only, with reference outputs
# --------------------------------------------------------------------------------------------
def best_e2e_run() -> tuple[str, dict]:
    """The end-to-end run whose chosen step has the best synthetic validation AUC (never COVERAGE)."""
    best = None
    for name in E2E_RUNS:
        chosen = _chosen_validation(_out() / name)
        if not (_out() / name / "final_metrics.json").exists() or not chosen:
            continue
        if best is None or chosen["auc_overall"] > best[1]["auc_overall"]:
            best = (name, chosen)
    if best is None:
        raise app.UsageError("package: no finished end-to-end run yet")
    return best


def run_package() -> None:
    from mantra_jax import checkpoint
    from mantra_jax.eval import reference

    if FLAGS.package_e2e:
        e2e_source = Path(FLAGS.package_e2e)
        chosen = _chosen_validation(e2e_source) or {}
    else:
        name, chosen = best_e2e_run()
        e2e_source = _out() / name
    imc_source = Path(FLAGS.package_imc) if FLAGS.package_imc else _out() / "imc_hl5"
    for source, target, extra in ((e2e_source, "mantranet_small", {"chosen_validation": chosen}),
                                  (imc_source, "imc_small", {})):
        destination = Path(FLAGS.package_dir) / target
        checkpoint.package_model(source, destination, extra)
        cfg, variables = checkpoint.load_model(destination)
        expected = reference.outputs(cfg, variables)
        (destination / "expected_outputs.json").write_text(json.dumps(expected, indent=1))
        _log(f"package: {source} -> {destination}")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    known = set(TRAIN_RUNS) | {"imc_eval", "coverage", "diagnose", "results", "package"}
    unknown = [p for p in FLAGS.parts if p not in known]
    if unknown:
        raise app.UsageError(f"unknown --parts {unknown}; known: {sorted(known)}")
    prepare_data()
    for part in FLAGS.parts:
        if part in TRAIN_RUNS:
            run_training(part)
        elif part == "imc_eval":
            run_imc_eval()
        elif part == "coverage":
            run_coverage()
        elif part == "diagnose":
            run_diagnose()
        elif part == "package":
            run_package()
        else:
            write_results()


if __name__ == "__main__":
    common.run(main, trainer=TRAINER)
