"""What the studies share: their data as folders of links (nothing copied), and their training
runs as the trainers' own commands, one process each, with the wall time each run took."""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mantra_jax.errors import UserError

WALL_FILE = "study_wall.json"  # in a run's work directory: seconds and invocations, over every resume


def link_subsets(source, destination, subsets: Sequence[str] = ()) -> None:
    """`destination`/<sub> -> `source`/<sub> for each of `subsets` (empty: every sub-folder), once:
    an existing `destination` is left as it is."""
    destination = Path(destination)
    if destination.exists():
        return
    if not source:
        raise UserError("--pristine_dir is required for the training runs")
    source = Path(source).absolute()
    names = list(subsets) or sorted(p.name for p in source.iterdir() if p.is_dir())
    missing = [name for name in names if not (source / name).is_dir()]
    if missing:
        raise UserError(f"{source}: no sub-folder {', '.join(missing)} (--pristine_subsets)")
    destination.mkdir(parents=True)
    for name in names:
        os.symlink(source / name, destination / name)


def link_coverage_masks(coverage, destination) -> None:
    """COVERAGE's forged-region masks as one folder of links, the fitted mask of mask_aligned/
    where the released one does not fit its image; once."""
    destination = Path(destination)
    if destination.exists():
        return
    coverage = Path(coverage).absolute()
    destination.mkdir(parents=True)
    for mask in sorted((coverage / "mask").glob("*forged.tif")):
        aligned = coverage / "mask_aligned" / mask.name
        os.symlink(aligned if aligned.exists() else mask, destination / mask.name)


def run_training(name: str, workdir, command: Sequence[str], log: Callable[[str], None]) -> float:
    """Runs a training run's command (which resumes the run in `workdir` where it stopped) to its
    end and adds its wall time to `workdir`/study_wall.json. Returns the seconds it took; a run that
    stopped before its final_metrics.json ends the study with that message (rerun to continue)."""
    workdir = Path(workdir)
    log(f"{name}: {' '.join(map(str, command))}")
    start = time.time()
    result = subprocess.run(list(command))
    elapsed = time.time() - start
    workdir.mkdir(parents=True, exist_ok=True)
    wall_path = workdir / WALL_FILE
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {"seconds": 0.0, "invocations": 0}
    wall_path.write_text(json.dumps({"seconds": wall["seconds"] + elapsed, "invocations": wall["invocations"] + 1}))
    if result.returncode != 0 or not (workdir / "final_metrics.json").exists():
        raise SystemExit(f"{name} stopped (exit {result.returncode}) after {elapsed:.0f} s; rerun the study to "
                         "continue it")
    log(f"{name}: done in {elapsed / 60:.1f} min")
    return elapsed
