"""Hyper-parameter sweeps: expand a spec into trials, run or submit them, summarise the results.

    python launch/sweep.py --dry_run SPEC            one line per trial: name, status, flags
    python launch/sweep.py SPEC --local              run unfinished trials here, one after another
    python launch/sweep.py SPEC --slurm [--sbatch_args="--time=4:00:00 ..."]
                                                     submit unfinished trials as a SLURM job array
    python launch/sweep.py summarize ROOT [--metric L0_top1] [--mode max]
                                                     final metrics of every trial, best first

Common options: --root DIR replaces the spec's root work directory (put it on shared storage for
SLURM); --set NAME=VALUE (repeatable) overrides or adds a fixed flag, e.g. `--set epochs=2 --set
steps_per_epoch=20` to run an ablation at a small scale.

A spec is a TOML file (or JSON with the same structure); see launch/README.md and the examples in
launch/sweeps/. Relative paths in it (base flagfile, root) are relative to the current directory,
which should be the repository root, as for `python -m experiments...`.

    name = "table4_hierarchy"                 # optional; default: the spec's file name
    module = "experiments.imc385"             # run as `python -m MODULE --flagfile=...`
    base_flagfile = "experiments/flags/imc385.flags"
    workdir = "runs/table4_hierarchy"         # root; trial T works in ROOT/T
    trial_name = "level{level}"               # optional str.format template over flag values
    [flags]                                   # fixed flags, the same for every trial
    epochs = 100
    [grid]                                    # cartesian product over these axes
    level = [0, 1, 2, 3, 4, 5]
    [[cases]]                                 # optional explicit flag sets, crossed with the grid
    init = "half_random"
    featex_learning_rate = 5e-5
    [random]                                  # n_trials random draws, crossed with the grid
    seed = 0
    n_trials = 4
    [random.axes.learning_rate]
    distribution = "loguniform"               # uniform | loguniform | randint | choice
    low = 1e-5
    high = 1e-3
    digits = 3                                # optional: round to 3 significant digits
    [slurm]                                   # #SBATCH directives of every array task
    gpus_per_node = 1
    time = "48:00:00"
    array_parallelism = 8                     # optional: at most 8 trials at once
    [summary]                                 # defaults of the summarize command
    metric = "val_loss"                       # its direction is known (see metric_mode);
    mode = "min"                              # a mode is needed for other metrics only

Trials are ordered cases x grid x random draws (the last varying fastest); the random draws come
from `random.Random(seed)` in axis order, and draw r is shared by every grid point, so grid
settings are compared on the same random configurations. Each trial gets ROOT/<trial>/trial.flags:
`--flagfile=<base>`, the fixed flags, the trial's flags and `--workdir=ROOT/<trial>`. A trial is
finished when ROOT/<trial>/final_metrics.json exists; --local and --slurm skip finished trials and
rerun the others with the same flagfile, and the trainers resume from their checkpoints, so an
interrupted sweep is resumed by running the same command again. A trainer stopped by SIGTERM exits
with status 75 (EX_TEMPFAIL): --local counts that trial as unfinished, not failed. --local itself
passes a SIGTERM on to the running trial, starts no other, and exits with 75 too, so that a
scheduler (SLURM --requeue) or a wrapper knows to run the same command again.

Standard library only: this file never imports JAX.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import threading
import sys
import tomllib
from pathlib import Path
from typing import Any

FINAL_METRICS = "final_metrics.json"
PREEMPTED = 75  # exit status of a trainer stopped by SIGTERM (experiments/common.py): unfinished
METRICS_LOG = "metrics.jsonl"
TRIAL_FLAGFILE = "trial.flags"
MANIFEST = "sweep.json"
SLURM_SCRIPT = "sweep.sbatch"
SUBMISSIONS_LOG = "submissions.log"
# Values written in example specs where a user must supply a path of their own.
PLACEHOLDER_PREFIX = "REPLACE_ME"

_SPEC_KEYS = {"name", "module", "base_flagfile", "workdir", "trial_name", "flags", "grid",
              "cases", "random", "slurm", "summary"}
_RANDOM_KEYS = {"seed", "n_trials", "axes"}
_AXIS_KEYS = {"distribution", "low", "high", "values", "digits"}
_DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
# The sweep sets these itself, per trial.
_RESERVED_FLAGS = {"workdir", "flagfile"}
_FLAG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")


class SpecError(ValueError):
    """A sweep spec (or a value given for it) that cannot be expanded."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of a sweep: its name, position and the flags that set it apart."""

    index: int
    name: str
    flags: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """An expanded spec: everything needed to write, run or submit its trials."""

    spec_path: Path
    name: str
    module: str
    base_flagfile: Path | None
    root: Path
    fixed_flags: dict[str, Any]
    trials: list[Trial]
    slurm: dict[str, Any]
    summary: dict[str, str]

    def workdir(self, trial: Trial) -> Path:
        return self.root / trial.name

    def flagfile(self, trial: Trial) -> Path:
        return self.workdir(trial) / TRIAL_FLAGFILE

    def is_finished(self, trial: Trial) -> bool:
        return (self.workdir(trial) / FINAL_METRICS).is_file()


# ------------------------------------------------------------------------------------------------
# Flag values
# ------------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """The text of a flag value in an absl flagfile (lists become comma lists, e.g. 7,15,31)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise SpecError(f"flag value {value!r} spans several lines")
        return value
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (list, tuple, dict)) for item in value):
            raise SpecError(f"flag value {value!r}: lists of lists cannot be written as a flag")
        return ",".join(format_value(item) for item in value)
    raise SpecError(f"flag value {value!r} of type {type(value).__name__} is not supported")


def format_flag(name: str, value: Any) -> str:
    return f"--{name}={format_value(value)}"


def _name_part(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_name_part(item) for item in value)
    return format_value(value)


def sanitize_name(text: str) -> str:
    """A directory-safe trial name: runs of other characters become '_'."""
    name = _NAME_CHARS.sub("_", text).strip("._-")
    return name or "trial"


def parse_override(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` -> (name, value): VALUE read as a TOML value if it is one, else a string."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected NAME=VALUE")
    name, raw = text.split("=", 1)
    name = name.strip().removeprefix("--")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return name, value


# ------------------------------------------------------------------------------------------------
# Spec -> trials
# ------------------------------------------------------------------------------------------------
def _check_flags(where: str, flags: Any, *, axis: bool = False) -> dict[str, Any]:
    if not isinstance(flags, dict):
        raise SpecError(f"{where} must be a table of flags")
    for name, value in flags.items():
        if not _FLAG_NAME.match(name):
            raise SpecError(f"{where}: {name!r} is not a flag name")
        if name in _RESERVED_FLAGS:
            raise SpecError(f"{where}: --{name} is set by the sweep for every trial")
        if axis:
            if not isinstance(value, list) or not value:
                raise SpecError(f"{where}.{name} must be a non-empty list of values")
            for item in value:
                format_value(item)
        else:
            format_value(value)
    return dict(flags)


def _draw(rng: random.Random, name: str, axis: dict[str, Any]) -> Any:
    kind = axis["distribution"]
    if kind == "choice":
        values = axis["values"]
        return values[min(int(rng.random() * len(values)), len(values) - 1)]
    low, high = axis["low"], axis["high"]
    if kind == "randint":
        return low + min(int(rng.random() * (high - low + 1)), high - low)
    if kind == "uniform":
        value = low + (high - low) * rng.random()
    else:  # loguniform
        value = math.exp(math.log(low) + (math.log(high) - math.log(low)) * rng.random())
    if "digits" in axis:
        value = float(f"{value:.{axis['digits']}g}")
    return value


def _check_axis(where: str, axis: Any) -> dict[str, Any]:
    if not isinstance(axis, dict):
        raise SpecError(f"{where} must be a table with a distribution")
    unknown = set(axis) - _AXIS_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
    kind = axis.get("distribution")
    if kind not in _DISTRIBUTIONS:
        raise SpecError(f"{where}.distribution must be one of {', '.join(_DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(axis.get("values"), list) or not axis["values"]:
            raise SpecError(f"{where}: a choice needs a non-empty list `values`")
        return axis
    low, high = axis.get("low"), axis.get("high")
    numbers = (int,) if kind == "randint" else (int, float)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in (low, high)):
        raise SpecError(f"{where}: {kind} needs numeric `low` and `high`")
    if low > high:
        raise SpecError(f"{where}: low={low} is above high={high}")
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"{where}: loguniform needs low > 0, got {low}")
    digits = axis.get("digits")
    if digits is not None and (not isinstance(digits, int) or digits < 1):
        raise SpecError(f"{where}.digits must be a positive integer")
    return axis


def draw_random_flags(random_spec: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The random draws of a spec's [random] table: n_trials dicts of flag values."""
    unknown = set(random_spec) - _RANDOM_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)} (expected seed, n_trials, axes)")
    seed, n_trials = random_spec.get("seed"), random_spec.get("n_trials")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SpecError(f"{where}.seed must be an integer (draws are reproducible)")
    if not isinstance(n_trials, int) or n_trials < 1:
        raise SpecError(f"{where}.n_trials must be a positive integer")
    axes = random_spec.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise SpecError(f"{where}.axes must hold at least one axis table")
    _check_flags(f"{where}.axes", {name: 0 for name in axes})
    checked = {name: _check_axis(f"{where}.axes.{name}", axis) for name, axis in axes.items()}
    rng = random.Random(seed)
    return [{name: _draw(rng, name, axis) for name, axis in checked.items()}
            for _ in range(n_trials)]


def read_spec(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".json":
            spec = json.loads(path.read_text())
        else:
            with path.open("rb") as handle:
                spec = tomllib.load(handle)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such sweep spec") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise SpecError(f"{path}: not a valid spec file: {error}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: a spec must be a table (TOML) or an object (JSON)")
    return spec


def load_sweep(spec_path: str | os.PathLike, *, root: str | None = None,
               overrides: list[tuple[str, Any]] = ()) -> Sweep:
    """Reads a spec and expands it into its trials (deterministically)."""
    spec_path = Path(spec_path)
    try:
        return _expand(spec_path, read_spec(spec_path), root, list(overrides))
    except SpecError as error:
        message = str(error)
        if not message.startswith(str(spec_path)):
            message = f"{spec_path}: {message}"
        raise SpecError(message) from None


def _expand(spec_path: Path, spec: dict[str, Any], root: str | None,
            overrides: list[tuple[str, Any]]) -> Sweep:
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise SpecError(f"unknown keys {sorted(unknown)}; expected some of {sorted(_SPEC_KEYS)}")
    module = spec.get("module")
    if not isinstance(module, str) or not _MODULE_NAME.match(module):
        raise SpecError("`module` must name a Python module, e.g. experiments.imc385")
    workdir = root if root is not None else spec.get("workdir")
    if not isinstance(workdir, str) or not workdir:
        raise SpecError("`workdir` (the sweep's root work directory) is missing; or pass --root")
    base = spec.get("base_flagfile")
    if base is not None and (not isinstance(base, str) or not base):
        raise SpecError("`base_flagfile` must be a path")
    name = spec.get("name", spec_path.stem)
    if not isinstance(name, str) or not name:
        raise SpecError("`name` must be a non-empty string")

    fixed = _check_flags("[flags]", spec.get("flags", {}))
    grid = _check_flags("[grid]", spec.get("grid", {}), axis=True)
    cases = spec.get("cases", [{}])
    if not isinstance(cases, list) or not cases:
        raise SpecError("[[cases]] must be a non-empty list of flag tables")
    cases = [_check_flags(f"[[cases]] #{i + 1}", case) for i, case in enumerate(cases)]
    samples = (draw_random_flags(spec["random"], "[random]") if "random" in spec else [None])

    sources = {"[flags]": set(fixed), "[grid]": set(grid),
               "[[cases]]": set().union(*map(set, cases)),
               "[random]": set(samples[0] or {})}
    for (first, names_a), (second, names_b) in itertools.combinations(sources.items(), 2):
        if names_a & names_b:
            raise SpecError(f"flags {sorted(names_a & names_b)} are set in both {first} and "
                            f"{second}; set each flag in one place")
    varying = sources["[grid]"] | sources["[[cases]]"] | sources["[random]"]
    for flag, value in overrides:
        if not _FLAG_NAME.match(flag) or flag in _RESERVED_FLAGS:
            raise SpecError(f"--set {flag}=...: not a flag the sweep can set")
        if flag in varying:
            raise SpecError(f"--set {flag}=...: {flag} varies across trials; edit the spec instead")
        format_value(value)
        fixed[flag] = value

    template = spec.get("trial_name")
    if template is not None and not isinstance(template, str):
        raise SpecError("`trial_name` must be a str.format template, e.g. 'level{level}'")
    width = len(str(len(samples) - 1))
    trials: list[Trial] = []
    for case, combo, (sample_index, sample) in itertools.product(
            cases, itertools.product(*grid.values()), enumerate(samples)):
        flags = {**case, **dict(zip(grid, combo)), **(sample or {})}
        index = len(trials)
        if template is not None:
            # Booleans as they appear in the flagfile; other values raw, so that format specs
            # ("{learning_rate:.0e}") and indexing ("{windows[0]}") work.
            values = {name: format_value(value) if isinstance(value, bool) else value
                      for name, value in {**fixed, **flags}.items()}
            values.update(index=index, sample=sample_index)
            try:
                text = template.format_map(values)
            except (KeyError, IndexError, ValueError) as error:
                raise SpecError(f"trial_name {template!r} cannot be filled for trial {index} "
                                f"(flags {flags}): {error!r}") from None
        else:
            parts = [f"r{sample_index:0{width}d}"] if sample is not None else []
            parts += [f"{flag}-{_name_part(value)}" for flag, value in flags.items()
                      if sample is None or flag not in sample]
            text = "_".join(parts)
        trials.append(Trial(index, sanitize_name(text), flags))

    seen: dict[str, int] = {}
    for trial in trials:
        if trial.name in seen:
            raise SpecError(f"trials {seen[trial.name]} and {trial.index} are both named "
                            f"{trial.name!r}; make trial_name include every varying flag")
        seen[trial.name] = trial.index

    slurm = spec.get("slurm", {})
    if not isinstance(slurm, dict):
        raise SpecError("[slurm] must be a table of sbatch options")
    for key, value in slurm.items():
        if not _FLAG_NAME.match(key) or key == "array":
            raise SpecError(f"[slurm]: {key!r} cannot be set here (the sweep writes --array)")
        if not isinstance(value, (str, int, float, bool)):
            raise SpecError(f"[slurm].{key} must be a string, number or boolean")
    summary = spec.get("summary", {})
    if not isinstance(summary, dict) or set(summary) - {"metric", "mode"}:
        raise SpecError("[summary] may hold only `metric` and `mode`")
    if "metric" in summary and (not isinstance(summary["metric"], str) or not summary["metric"]):
        raise SpecError("[summary].metric must be a metric name, e.g. val_loss or L0_top1")
    if "mode" in summary:
        if summary["mode"] not in MODES:
            raise SpecError("[summary].mode must be min or max")
        if "metric" not in summary:
            raise SpecError("[summary].mode needs [summary].metric: a mode is the direction of one "
                            "metric and never applies to another")
        known = metric_mode(summary["metric"])
        if known is not None and known != summary["mode"]:
            raise SpecError(f"[summary].mode = {summary['mode']!r} contradicts {summary['metric']}, "
                            f"for which {_BETTER[known]} is better; drop the mode")

    return Sweep(spec_path=spec_path, name=name, module=module,
                 base_flagfile=Path(os.path.abspath(os.path.expanduser(base))) if base else None,
                 root=Path(os.path.abspath(os.path.expanduser(workdir))),
                 fixed_flags=fixed, trials=trials, slurm=dict(slurm), summary=dict(summary))


# ------------------------------------------------------------------------------------------------
# Writing trials
# ------------------------------------------------------------------------------------------------
def trial_flag_lines(sweep: Sweep, trial: Trial) -> list[str]:
    """The flags of one trial, in the order absl applies them (later lines win)."""
    lines = [f"--flagfile={sweep.base_flagfile}"] if sweep.base_flagfile else []
    lines += [format_flag(name, value) for name, value in sweep.fixed_flags.items()]
    lines += [format_flag(name, value) for name, value in trial.flags.items()]
    lines.append(f"--workdir={sweep.workdir(trial)}")
    return lines


def flagfile_text(sweep: Sweep, trial: Trial) -> str:
    header = [
        f"# Trial {trial.name} ({trial.index + 1} of {len(sweep.trials)}) of sweep {sweep.name},",
        f"# written by launch/sweep.py from {sweep.spec_path}.",
        "# Rerunning the trainer with this flagfile resumes the trial from its checkpoint.",
    ]
    return "\n".join(header + trial_flag_lines(sweep, trial)) + "\n"


def check_runnable(sweep: Sweep) -> None:
    """Refuses to start trials that cannot work: a missing base flagfile, placeholder values."""
    for trial in sweep.trials:
        for name, value in {**sweep.fixed_flags, **trial.flags}.items():
            if isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIX):
                raise SpecError(f"{sweep.spec_path}: --{name}={value} is a placeholder; give the "
                                f"real value with --set {name}=VALUE")
    if sweep.base_flagfile is not None and not sweep.base_flagfile.is_file():
        raise SpecError(f"{sweep.spec_path}: base flagfile {sweep.base_flagfile} does not exist")


def write_trials(sweep: Sweep, trials: list[Trial]) -> None:
    """Writes the flagfiles of `trials` and the sweep's manifest under the root."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    for trial in trials:
        sweep.workdir(trial).mkdir(parents=True, exist_ok=True)
        sweep.flagfile(trial).write_text(flagfile_text(sweep, trial))
    manifest = {
        "name": sweep.name,
        "spec": str(sweep.spec_path),
        "module": sweep.module,
        "base_flagfile": str(sweep.base_flagfile) if sweep.base_flagfile else None,
        "fixed_flags": sweep.fixed_flags,
        "trials": [{"index": t.index, "name": t.name, "flags": t.flags} for t in sweep.trials],
        "summary": sweep.summary,
    }
    (sweep.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# Dry run, local runs, SLURM job arrays
# ------------------------------------------------------------------------------------------------
def dry_run_lines(sweep: Sweep) -> list[str]:
    """One line per trial: name, done/todo, and the flags that set the trial apart."""
    return [f"{trial.name}\t{'done' if sweep.is_finished(trial) else 'todo'}\t"
            + " ".join(format_flag(name, value) for name, value in trial.flags.items())
            for trial in sweep.trials]


def run_local(sweep: Sweep, *, python: str = sys.executable, processes: int = 1) -> int:
    """Runs the unfinished trials one after another; returns 0 when every trial is finished, 1
    when one failed, PREEMPTED when trials were stopped by SIGTERM (a rerun resumes them)."""
    check_runnable(sweep)
    todo = [t for t in sweep.trials if not sweep.is_finished(t)]
    write_trials(sweep, todo)
    print(f"[sweep] {sweep.name}: {len(sweep.trials) - len(todo)} of {len(sweep.trials)} trials "
          f"finished already, running {len(todo)}", flush=True)
    local_launcher = Path(__file__).resolve().with_name("local.py")
    failed, preempted = [], []
    running: list[subprocess.Popen] = []
    terminated = threading.Event()

    def forward_sigterm(signum, frame):
        del signum, frame
        terminated.set()
        for process in running:
            process.send_signal(signal.SIGTERM)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward_sigterm) if in_main_thread else None
    try:
        for trial in todo:
            if terminated.is_set():
                preempted.append(f"{trial.name} (not started)")
                continue
            module_args = [sweep.module, f"--flagfile={sweep.flagfile(trial)}"]
            if processes > 1:
                command = [python, str(local_launcher), f"--num_processes={processes}", *module_args]
            else:
                command = [python, "-m", *module_args]
            print(f"[sweep] trial {trial.index} {trial.name}: {shlex.join(command)}", flush=True)
            running.append(subprocess.Popen(command))
            if terminated.is_set():  # the signal came while the trial was starting
                running[0].send_signal(signal.SIGTERM)
            returncode = running[0].wait()
            running.clear()
            if returncode == PREEMPTED or (terminated.is_set() and not sweep.is_finished(trial)):
                preempted.append(f"{trial.name} (exit status {returncode})")
            elif returncode != 0:
                failed.append(f"{trial.name} (exit status {returncode})")
            elif not sweep.is_finished(trial):
                failed.append(f"{trial.name} (exited without writing {FINAL_METRICS})")
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"[sweep] {len(failed)} trials did not finish: {', '.join(failed)}",
              file=sys.stderr, flush=True)
    if preempted:
        print(f"[sweep] {len(preempted)} trials stopped by SIGTERM, unfinished: {', '.join(preempted)}; "
              f"run the same command again to resume them", file=sys.stderr, flush=True)
    if failed or preempted:
        return 1 if failed else PREEMPTED
    print(f"[sweep] {sweep.name}: all {len(sweep.trials)} trials finished", flush=True)
    return 0


def array_ranges(indices: list[int]) -> str:
    """SLURM's --array syntax for sorted indices, e.g. [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts = []
    for _, run in itertools.groupby(enumerate(indices), key=lambda pair: pair[1] - pair[0]):
        run = [index for _, index in run]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def slurm_script(sweep: Sweep, indices: list[int], *, python: str, workdir: str,
                 array_parallelism: int | None = None) -> str:
    """The job-array batch script: array task i runs trial i unless it has finished since."""
    options = {"job_name": sweep.name, "output": str(sweep.root / "slurm" / "%A_%a.out")}
    options.update(sweep.slurm)
    parallelism = options.pop("array_parallelism", None)
    if array_parallelism is not None:
        parallelism = array_parallelism
    array = array_ranges(indices) + (f"%{parallelism}" if parallelism else "")
    lines = [
        "#!/bin/bash",
        f"# Job array of sweep {sweep.name}, written by launch/sweep.py from {sweep.spec_path}.",
        "# Array task i runs trial i of TRIALS; a trial finished in the meantime is skipped, and",
        "# an unfinished one resumes from its checkpoint. Resubmit with the same sweep.py command.",
        f"#SBATCH --array={array}",
    ]
    for key, value in options.items():
        option = "--" + key.replace("_", "-")
        if value is True:
            lines.append(f"#SBATCH {option}")
        elif value is not False:
            lines.append(f"#SBATCH {option}={format_value(value)}")
    names = " ".join(shlex.quote(trial.name) for trial in sweep.trials)
    lines += [
        "set -euo pipefail",
        f"TRIALS=({names})",
        'TRIAL="${TRIALS[$SLURM_ARRAY_TASK_ID]}"',
        f"WORKDIR={shlex.quote(str(sweep.root))}/\"$TRIAL\"",
        'echo "trial $TRIAL (array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID) on '
        '$(hostname)"',
        f'if [[ -f "$WORKDIR/{FINAL_METRICS}" ]]; then',
        '  echo "trial $TRIAL has finished already"',
        "  exit 0",
        "fi",
        f"cd {shlex.quote(workdir)}",
        "export PYTHONUNBUFFERED=1",
        "# srun starts the job's tasks (one per GPU when [slurm] asks for several); each joins the",
        "# run through jax.distributed, which reads the SLURM_* variables srun sets.",
        f"srun --kill-on-bad-exit=1 {shlex.quote(python)} -m {sweep.module} "
        f'--flagfile="$WORKDIR/{TRIAL_FLAGFILE}"',
    ]
    return "\n".join(lines) + "\n"


def submit_slurm(sweep: Sweep, *, sbatch_args: list[str] = (), python: str = sys.executable,
                 array_parallelism: int | None = None) -> int:
    """Writes the unfinished trials and submits them as one job array through sbatch."""
    check_runnable(sweep)
    todo = [t for t in sweep.trials if not sweep.is_finished(t)]
    if not todo:
        print(f"[sweep] {sweep.name}: all {len(sweep.trials)} trials finished; nothing to submit")
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SpecError("sbatch is not on PATH: run --slurm on a SLURM login node")
    write_trials(sweep, todo)
    (sweep.root / "slurm").mkdir(exist_ok=True)
    indices = [t.index for t in todo]
    script = sweep.root / SLURM_SCRIPT
    script.write_text(slurm_script(sweep, indices, python=python, workdir=os.getcwd(),
                                   array_parallelism=array_parallelism))
    command = [sbatch, *sbatch_args, str(script)]
    print(f"[sweep] {sweep.name}: submitting {len(todo)} of {len(sweep.trials)} trials: "
          f"{shlex.join(command)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        print(f"[sweep] sbatch failed with exit status {result.returncode}", file=sys.stderr)
        return result.returncode
    job = re.search(r"(\d+)", result.stdout)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    with (sweep.root / SUBMISSIONS_LOG).open("a") as log:
        log.write(f"{stamp}\tjob {job.group(1) if job else '?'}\tarray "
                  f"{array_ranges(indices)}\t{' '.join(t.name for t in todo)}\n")
    return 0


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------
def read_trial_flags(path: Path) -> dict[str, str]:
    """The `--name=value` lines of a trial flagfile, without the base flagfile and workdir."""
    flags = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("--") or line.startswith(("--flagfile=", "--workdir=")):
            continue
        name, _, value = line[2:].partition("=")
        flags[name] = value
    return flags


def _last_step(path: Path) -> Any:
    # The last line may be half written by a running trainer: take the last one that parses.
    for line in reversed(path.read_text().splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            return record["step"]
    return None


def collect_trials(root: Path) -> list[dict[str, Any]]:
    """Name, status, flags and final metrics of every trial directory under `root`."""
    if not root.is_dir():
        raise SpecError(f"{root}: no such sweep root directory")
    trials = []
    for workdir in sorted(p for p in root.iterdir() if p.is_dir()):
        flagfile, final, log = (workdir / TRIAL_FLAGFILE, workdir / FINAL_METRICS,
                                workdir / METRICS_LOG)
        if not (flagfile.is_file() or final.is_file() or log.is_file()):
            continue
        record = {"name": workdir.name, "flags": {}, "metrics": {}, "status": "not started",
                  "last_step": None}
        if flagfile.is_file():
            record["flags"] = read_trial_flags(flagfile)
        if final.is_file():
            try:
                metrics = json.loads(final.read_text())
            except json.JSONDecodeError as error:
                raise SpecError(f"{final}: not valid JSON: {error}") from None
            if not isinstance(metrics, dict):
                raise SpecError(f"{final}: expected a JSON object of metrics")
            record["metrics"] = metrics
            record["status"] = "finished"
        elif log.is_file():
            record["status"] = "unfinished"
            record["last_step"] = _last_step(log)
        trials.append(record)
    return trials


MODES = ("min", "max")
_BETTER = {"min": "lower", "max": "higher"}
# The metrics the trainers and evaluators write (final_metrics.json, metrics.jsonl, report.json),
# by name part: losses fall (val_loss, best_val_loss); top-k (L0_top1, L5_top5), AUC (auc_overall,
# pixel_auc_mean), F1 (f1_splicing), IoU (iou_at_0.5_mean) and accuracies rise.
_LOWER_IS_BETTER = re.compile(r"(?:^|_)loss(?:$|_)", re.IGNORECASE)
_HIGHER_IS_BETTER = re.compile(r"(?:^|_)(?:top\d+|auc|f1|iou|acc|accuracy)(?:$|_)", re.IGNORECASE)


def metric_mode(metric: str) -> str | None:
    """"min" for a loss, "max" for top-k, AUC, F1, IoU and accuracies, None for a name it does not
    know (step, lr, grad_norm, ...), whose direction must be given."""
    lower, higher = bool(_LOWER_IS_BETTER.search(metric)), bool(_HIGHER_IS_BETTER.search(metric))
    if lower == higher:
        return None
    return "min" if lower else "max"


def summary_order(metric: str | None, mode: str | None,
                  defaults: dict[str, str]) -> tuple[str, str]:
    """(metric, mode) of a summary: the metric asked for, else the spec's [summary] metric, else
    val_loss; the mode asked for, else the spec's mode when ranking by the spec's own metric, else
    the metric's known direction. An unknown metric without a mode is refused, never guessed."""
    spec_metric = defaults.get("metric") or "val_loss"
    metric = metric or spec_metric
    if mode is None and metric == spec_metric and defaults.get("mode") in MODES:
        mode = defaults["mode"]
    known = metric_mode(metric)
    if mode is None:
        if known is None:
            raise SpecError(f"the direction of {metric!r} is not known (known: losses are lower-is-"
                            "better; top-k, AUC, F1, IoU and accuracies higher-is-better); pass "
                            "--mode min or --mode max")
        mode = known
    elif known is not None and mode != known:
        print(f"[sweep] warning: ranking {metric} with mode {mode} puts the worst first ({_BETTER[known]} "
              "is better for it)", file=sys.stderr)
    return metric, mode


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def rank_trials(trials: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Finished trials with the metric best first (ties by name), then the rest by name."""
    def key(record):
        value = _number(record["metrics"].get(metric))
        if record["status"] != "finished" or value is None:
            group = 1 if record["status"] == "finished" else 2
            return (group, 0.0, record["name"])
        return (0, value if mode == "min" else -value, record["name"])
    return sorted(trials, key=key)


def summary_table(trials: list[dict[str, Any]], metric: str, mode: str) -> list[list[Any]]:
    """Header row plus one row per trial, best first: rank, trial, status, flags, metrics."""
    ranked = rank_trials(trials, metric, mode)
    flag_names = []
    for record in ranked:
        flag_names += [name for name in record["flags"] if name not in flag_names]
    varying = [name for name in flag_names
               if len({record["flags"].get(name, "") for record in ranked}) > 1]
    metric_names = sorted({name for record in ranked for name in record["metrics"]})
    ordered = [metric] + (["step"] if "step" in metric_names and metric != "step" else [])
    metric_names = ordered + [name for name in metric_names if name not in ordered]
    rows = [["rank", "trial", "status", *varying, *metric_names]]
    rank = 0
    for record in ranked:
        has_metric = (record["status"] == "finished"
                      and _number(record["metrics"].get(metric)) is not None)
        rank += has_metric
        status = record["status"]
        if status == "unfinished" and record["last_step"] is not None:
            status = f"unfinished (step {record['last_step']})"
        rows.append([rank if has_metric else "-", record["name"], status,
                     *(record["flags"].get(name, "") for name in varying),
                     *(record["metrics"].get(name, "") for name in metric_names)])
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(v) for v in rows[0]) + " |",
             "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return buffer.getvalue()


def summarize(root: str | os.PathLike, metric: str | None = None,
              mode: str | None = None) -> tuple[str, str]:
    """Markdown and CSV tables of a sweep's trials, best first; also written under the root."""
    root = Path(root)
    trials = collect_trials(root)
    if not trials:
        raise SpecError(f"{root}: no trial directories (with {TRIAL_FLAGFILE}, {FINAL_METRICS} "
                        f"or {METRICS_LOG}) found")
    defaults = {}
    if (root / MANIFEST).is_file():
        try:
            defaults = json.loads((root / MANIFEST).read_text()).get("summary", {})
        except (json.JSONDecodeError, AttributeError) as error:
            raise SpecError(f"{root / MANIFEST}: not a sweep manifest: {error}") from None
    if not isinstance(defaults, dict):
        raise SpecError(f"{root / MANIFEST}: its \"summary\" is not an object")
    finished = [t for t in trials if t["status"] == "finished"]
    wanted = metric or defaults.get("metric") or "val_loss"
    if finished and not any(wanted in t["metrics"] for t in finished):
        available = sorted({name for t in finished for name in t["metrics"]})
        raise SpecError(f"no finished trial under {root} reports {wanted!r}; their "
                        f"{FINAL_METRICS} hold: {', '.join(available)}")
    metric, mode = summary_order(metric, mode, defaults)
    rows = summary_table(trials, metric, mode)
    title = (f"Sweep {root.name}: {len(finished)} of {len(trials)} trials finished, ranked by "
             f"{metric} ({_BETTER[mode]} is better)\n\n")
    markdown = title + markdown_table(rows)
    csv_text = csv_table(rows)
    (root / "summary.md").write_text(markdown)
    (root / "summary.csv").write_text(csv_text)
    return markdown, csv_text


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def _summarize_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sweep.py summarize",
        description="Collect final metrics of a sweep's trials into one table, best first "
                    "(printed as markdown; also written to ROOT/summary.md and ROOT/summary.csv).")
    parser.add_argument("root", help="the sweep's root work directory")
    parser.add_argument("--metric", default=None,
                        help="metric to rank by (default: the spec's [summary], else val_loss)")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="min or max is best (default: the metric's known direction: min for "
                             "losses; max for top-k, AUC, F1, IoU and accuracies; needed for "
                             "any other metric)")
    args = parser.parse_args(argv)
    markdown, _ = summarize(args.root, args.metric, args.mode)
    sys.stdout.write(markdown)
    print(f"[sweep] wrote {Path(args.root) / 'summary.md'} and {Path(args.root) / 'summary.csv'}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "summarize":
            return _summarize_main(argv[1:])
        parser = argparse.ArgumentParser(
            prog="sweep.py", description="\n\n".join(__doc__.split("\n\n")[:3]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Summaries: sweep.py summarize ROOT [--metric NAME] [--mode min|max]")
        parser.add_argument("spec", help="sweep spec (.toml or .json)")
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--dry_run", action="store_true",
                            help="print one line per trial (name, done/todo, flags); write nothing")
        action.add_argument("--local", action="store_true",
                            help="run the unfinished trials here, one after another")
        action.add_argument("--slurm", action="store_true",
                            help="submit the unfinished trials as a SLURM job array")
        parser.add_argument("--root", default=None, help="root work directory (overrides the spec)")
        parser.add_argument("--set", dest="overrides", action="append", default=[],
                            metavar="NAME=VALUE", help="override or add a fixed flag (repeatable)")
        parser.add_argument("--python", default=sys.executable,
                            help="interpreter that runs the trainers (default: this one)")
        parser.add_argument("--processes", type=int, default=1,
                            help="--local: processes per trial, through launch/local.py")
        parser.add_argument("--sbatch_args", action="append", default=[],
                            help="--slurm: extra sbatch arguments, e.g. "
                                 '--sbatch_args="--time=2:00:00 --partition=gpu" (they override '
                                 "the spec's [slurm] table)")
        parser.add_argument("--array_parallelism", type=int, default=None,
                            help="--slurm: at most this many trials at once")
        args = parser.parse_args(argv)
        sweep = load_sweep(args.spec, root=args.root,
                           overrides=[parse_override(text) for text in args.overrides])
        if args.dry_run:
            print(f"# sweep {sweep.name}: {len(sweep.trials)} trials of python -m {sweep.module}, "
                  f"base {sweep.base_flagfile}, root {sweep.root}, fixed flags: "
                  + (" ".join(format_flag(n, v) for n, v in sweep.fixed_flags.items()) or "none"),
                  file=sys.stderr)
            if sweep.base_flagfile is not None and not sweep.base_flagfile.is_file():
                print(f"# warning: base flagfile {sweep.base_flagfile} does not exist",
                      file=sys.stderr)
            for line in dry_run_lines(sweep):
                print(line)
            return 0
        if args.local:
            return run_local(sweep, python=args.python, processes=args.processes)
        sbatch_args = [part for text in args.sbatch_args for part in shlex.split(text)]
        return submit_slurm(sweep, sbatch_args=sbatch_args, python=args.python,
                            array_parallelism=args.array_parallelism)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
