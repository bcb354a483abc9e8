"""Sweeps: a spec -> one flagfile per trial -> a SLURM job array (or a local loop) -> a summary.

    python launch/sweep.py --dry_run SPEC            one line per trial: name, done/todo, flags
    python launch/sweep.py SPEC --slurm [--sbatch_args="--partition=gpu ..."]
                                                     the unfinished trials as one SLURM job array
    python launch/sweep.py SPEC --local              the unfinished trials here, one after another
    python launch/sweep.py summarize ROOT [--metric L0_top1] [--mode max]
                                                     final metrics of every trial, best first

--root DIR replaces the spec's root work directory (shared storage for SLURM); --set NAME=VALUE
(repeatable) overrides or adds a fixed flag, e.g. `--set epochs=2 --set steps_per_epoch=20`.

A spec is a TOML file, one per paper table under launch/sweeps/ (format: launch/README.md). Its
trials are cases x grid (the last axis varying fastest). Trial i gets ROOT/trials/i.flags
(`--flagfile=<base>`, the fixed flags, the trial's flags, `--workdir=ROOT/<trial name>`) and is
finished when its work directory holds final_metrics.json without `time_limited: true` (a trial
stopped by --max_seconds is continued by the same command, and summarize does not rank it). --slurm submits
`sbatch --array=<unfinished indices> launch/slurm.sbatch MODULE --flagfile=ROOT/trials/%a.flags`;
--local runs `python -m MODULE --flagfile=ROOT/trials/i.flags` for each unfinished i. The trainers
resume from their checkpoints, so the same command resumes an interrupted sweep. A trainer stopped
by SIGTERM exits with 75 (experiments/common.py); --local then starts no other trial and exits
with 75 too (a SIGTERM it receives is passed on to the running trial); it also exits with 75 when
a trial stopped at its time limit.

Standard library only: this file never imports JAX.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

FINAL_METRICS = "final_metrics.json"
PREEMPTED = 75  # exit status of a trainer stopped by SIGTERM (experiments/common.py): unfinished
METRICS_LOG = "metrics.jsonl"
TRIALS_DIR = "trials"
MANIFEST = "sweep.json"
SLURM_SCRIPT = Path(__file__).resolve().with_name("slurm.sbatch")
# Values written in example specs where a user must supply a path of their own.
PLACEHOLDER_PREFIX = "REPLACE_ME"

_SPEC_KEYS = {"name", "module", "base_flagfile", "workdir", "trial_name", "flags", "grid",
              "cases", "slurm", "summary"}
_RESERVED_FLAGS = {"workdir", "flagfile"}  # the sweep sets these itself, per trial
_FLAG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")


class SpecError(ValueError):
    """A sweep spec (or a value given for it) that cannot be expanded."""


@dataclasses.dataclass(frozen=True)
class Trial:
    index: int
    name: str
    flags: dict[str, Any]  # the flags that set it apart


@dataclasses.dataclass(frozen=True)
class Sweep:
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
        return self.root / TRIALS_DIR / f"{trial.index}.flags"

    def is_finished(self, trial: Trial) -> bool:
        return finished(self.workdir(trial) / FINAL_METRICS)


def finished(final_metrics: Path) -> bool:
    """Whether a trial's final_metrics.json says it ran to its end: present, readable, and not
    stopped by the trainer's time limit (`time_limited`: the same command continues it)."""
    try:
        record = json.loads(final_metrics.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and not record.get("time_limited")


# ------------------------------------------------------------------------------------------------
# Spec -> trials
# ------------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """The text of a flag value in an absl flagfile (lists become comma lists, e.g. 7,15,31)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            raise SpecError(f"flag value {value!r} spans several lines")
        return str(value)
    if isinstance(value, float):
        return repr(value)
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


def parse_override(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` -> (name, value): VALUE read as a TOML value if it is one, else a string."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected NAME=VALUE")
    name, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return name.strip().removeprefix("--"), value


def _check_flags(where: str, flags: Any, *, axis: bool = False) -> dict[str, Any]:
    if not isinstance(flags, dict):
        raise SpecError(f"{where} must be a table of flags")
    for name, value in flags.items():
        if not _FLAG_NAME.match(name):
            raise SpecError(f"{where}: {name!r} is not a flag name")
        if name in _RESERVED_FLAGS:
            raise SpecError(f"{where}: --{name} is set by the sweep for every trial")
        if axis and (not isinstance(value, list) or not value):
            raise SpecError(f"{where}.{name} must be a non-empty list of values")
        for item in value if axis else [value]:
            format_value(item)
    return dict(flags)


def read_spec(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such sweep spec") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: a folder, not a sweep spec (.toml file)") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot be read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not a valid spec file: not UTF-8 text ({error.reason} at byte "
                        f"{error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not a valid spec file: {error}") from None


def load_sweep(spec_path: str | os.PathLike, *, root: str | None = None,
               overrides: list[tuple[str, Any]] = ()) -> Sweep:
    """Reads a spec and expands it into its trials (deterministically)."""
    spec_path = Path(spec_path)
    try:
        return _expand(spec_path, read_spec(spec_path), root, list(overrides))
    except SpecError as error:
        message = str(error)
        raise SpecError(message if message.startswith(str(spec_path))
                        else f"{spec_path}: {message}") from None


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
    if not isinstance(name, str) or not name or not name.isprintable():
        raise SpecError(f"`name` must be a non-empty string on one line of printable characters, got {name!r}")

    fixed = _check_flags("[flags]", spec.get("flags", {}))
    grid = _check_flags("[grid]", spec.get("grid", {}), axis=True)
    cases = spec.get("cases", [{}])
    if not isinstance(cases, list) or not cases:
        raise SpecError("[[cases]] must be a non-empty list of flag tables")
    cases = [_check_flags(f"[[cases]] #{i + 1}", case) for i, case in enumerate(cases)]
    sources = {"[flags]": set(fixed), "[grid]": set(grid),
               "[[cases]]": set().union(*map(set, cases))}
    for (first, names_a), (second, names_b) in itertools.combinations(sources.items(), 2):
        if names_a & names_b:
            raise SpecError(f"flags {sorted(names_a & names_b)} are set in both {first} and "
                            f"{second}; set each flag in one place")
    for flag, value in overrides:
        if not _FLAG_NAME.match(flag) or flag in _RESERVED_FLAGS:
            raise SpecError(f"--set {flag}=...: not a flag the sweep can set")
        if flag in sources["[grid]"] | sources["[[cases]]"]:
            raise SpecError(f"--set {flag}=...: {flag} varies across trials; edit the spec instead")
        format_value(value)
        fixed[flag] = value

    template = spec.get("trial_name")
    if template is not None and not isinstance(template, str):
        raise SpecError("`trial_name` must be a str.format template, e.g. 'level{level}'")
    trials: list[Trial] = []
    for case, combo in itertools.product(cases, itertools.product(*grid.values())):
        flags = {**case, **dict(zip(grid, combo))}
        index = len(trials)
        if template is None:
            text = "_".join(f"{flag}-{_name_part(value)}" for flag, value in flags.items())
        else:
            # Booleans as in the flagfile; other values raw, so that format specs
            # ("{learning_rate:.0e}") and indexing ("{windows[0]}") work.
            values = {name: format_value(value) if isinstance(value, bool) else value
                      for name, value in {**fixed, **flags}.items()}
            try:
                text = template.format_map({**values, "index": index})
            except Exception as error:  # noqa: BLE001 - any field, attribute or index the values lack
                raise SpecError(f"trial_name {template!r} cannot be filled for trial {index} "
                                f"(flags {flags}): {error!r}") from None
        trials.append(Trial(index, _NAME_CHARS.sub("_", text).strip("._-") or "trial", flags))
    seen: dict[str, int] = {}
    for trial in trials:
        if trial.name in (TRIALS_DIR, "slurm"):
            raise SpecError(f"trial {trial.index} is named {trial.name!r}, a folder the sweep writes")
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
# Trials -> flagfiles, and running them
# ------------------------------------------------------------------------------------------------
def flagfile_text(sweep: Sweep, trial: Trial) -> str:
    """The flags of one trial, in the order absl applies them (later lines win)."""
    lines = [f"# Trial {trial.index} ({trial.name}) of sweep {sweep.name}, written by "
             f"launch/sweep.py from {sweep.spec_path}."]
    lines += [f"--flagfile={sweep.base_flagfile}"] if sweep.base_flagfile else []
    lines += [format_flag(name, value)
              for name, value in {**sweep.fixed_flags, **trial.flags}.items()]
    lines.append(f"--workdir={sweep.workdir(trial)}")
    return "\n".join(lines) + "\n"


def check_runnable(sweep: Sweep) -> None:
    """Refuses to start trials that cannot work: a missing base flagfile, placeholder values."""
    for trial in sweep.trials:
        for name, value in {**sweep.fixed_flags, **trial.flags}.items():
            if isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIX):
                raise SpecError(f"{sweep.spec_path}: --{name}={value} is a placeholder; give the "
                                f"real value with --set {name}=VALUE")
    if sweep.base_flagfile is not None and not sweep.base_flagfile.is_file():
        raise SpecError(f"{sweep.spec_path}: base flagfile {sweep.base_flagfile} does not exist")


def write_trials(sweep: Sweep) -> list[Trial]:
    """Writes ROOT/trials/i.flags of every trial and ROOT/sweep.json; returns the unfinished."""
    check_runnable(sweep)
    (sweep.root / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
    for trial in sweep.trials:
        sweep.flagfile(trial).write_text(flagfile_text(sweep, trial))
    manifest = {"name": sweep.name, "spec": str(sweep.spec_path), "module": sweep.module,
                "trials": [{"index": t.index, "name": t.name, "flags": t.flags}
                           for t in sweep.trials],
                "summary": sweep.summary}
    (sweep.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    todo = [t for t in sweep.trials if not sweep.is_finished(t)]
    print(f"[sweep] {sweep.name}: {len(sweep.trials) - len(todo)} of {len(sweep.trials)} trials "
          f"finished already, {len(todo)} to run", flush=True)
    return todo


def dry_run_lines(sweep: Sweep) -> list[str]:
    """One line per trial: name, done/todo, and the flags that set the trial apart."""
    return [f"{trial.name}\t{'done' if sweep.is_finished(trial) else 'todo'}\t"
            + " ".join(format_flag(name, value) for name, value in trial.flags.items())
            for trial in sweep.trials]


def run_local(sweep: Sweep) -> int:
    """Runs the unfinished trials one after another: 0 when all finished, 1 when one failed,
    PREEMPTED when one was stopped by SIGTERM (no further trial starts; a rerun resumes)."""
    running: list[subprocess.Popen] = []
    stopped = []

    def pass_on(signum, frame):
        stopped.append(signum)
        for process in running:
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    failed, limited = [], []
    for trial in write_trials(sweep):
        command = [sys.executable, "-m", sweep.module, f"--flagfile={sweep.flagfile(trial)}"]
        print(f"[sweep] trial {trial.index} {trial.name}: {shlex.join(command)}", flush=True)
        running.append(subprocess.Popen(command))
        if stopped:  # the signal came while the trial was starting
            running[0].send_signal(signal.SIGTERM)
        status = running[0].wait()
        running.clear()
        if status == PREEMPTED or stopped:
            print(f"[sweep] trial {trial.name} stopped by SIGTERM (exit status {status}), "
                  "unfinished; run the same command again to resume the sweep",
                  file=sys.stderr, flush=True)
            return PREEMPTED
        if status == 0 and not sweep.is_finished(trial) and (sweep.workdir(trial) / FINAL_METRICS).is_file():
            limited.append(trial.name)  # stopped by its --max_seconds: the same command continues it
        elif status != 0 or not sweep.is_finished(trial):
            failed.append(f"{trial.name} (exit status {status})")
    if failed:
        print(f"[sweep] {len(failed)} trials did not finish: {', '.join(failed)}", file=sys.stderr)
        return 1
    if limited:
        print(f"[sweep] {len(limited)} trials stopped at their time limit (--max_seconds), unfinished: "
              f"{', '.join(limited)}; run the same command again to continue them", file=sys.stderr)
        return PREEMPTED
    print(f"[sweep] {sweep.name}: all {len(sweep.trials)} trials finished", flush=True)
    return 0


def array_ranges(indices: list[int]) -> str:
    """SLURM's --array syntax for sorted indices, e.g. [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts = []
    for _, run in itertools.groupby(enumerate(indices), key=lambda pair: pair[1] - pair[0]):
        run = [index for _, index in run]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def sbatch_command(sweep: Sweep, trials: list[Trial], sbatch_args: list[str] = ()) -> list[str]:
    """One job array over `trials`: task i runs launch/slurm.sbatch on ROOT/trials/i.flags. The
    spec's [slurm] options (underscores become dashes) and then `sbatch_args` override the
    script's #SBATCH lines."""
    options = {"job_name": sweep.name, "output": str(sweep.root / "slurm" / "%A_%a.out"),
               **sweep.slurm}
    parallelism = options.pop("array_parallelism", None)
    command = ["sbatch", f"--array={array_ranges([t.index for t in trials])}"
               + (f"%{parallelism}" if parallelism else "")]
    for key, value in options.items():
        if value is not False:
            command.append("--" + key.replace("_", "-")
                           + ("" if value is True else f"={format_value(value)}"))
    return [*command, *sbatch_args, str(SLURM_SCRIPT), sweep.module,
            f"--flagfile={sweep.root / TRIALS_DIR}/%a.flags"]


def submit_slurm(sweep: Sweep, sbatch_args: list[str] = ()) -> int:
    if shutil.which("sbatch") is None:
        raise SpecError("sbatch is not on PATH: run --slurm on a SLURM login node")
    todo = write_trials(sweep)
    if not todo:
        return 0
    (sweep.root / "slurm").mkdir(exist_ok=True)
    command = sbatch_command(sweep, todo, sbatch_args)
    print(f"[sweep] {shlex.join(command)}", flush=True)
    # The array tasks run the trainers with this interpreter (slurm.sbatch reads PYTHON).
    return subprocess.run(command, env=dict(os.environ, PYTHON=sys.executable)).returncode


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------
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


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SpecError(f"{path}: not {what}: {error}") from None


def collect_trials(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Name, status, flags and final metrics of every trial directory under `root` (a directory
    with final_metrics.json or metrics.jsonl), and the spec's [summary] defaults."""
    if not root.is_dir():
        raise SpecError(f"{root}: no such sweep root directory")
    manifest = _read_json(root / MANIFEST, "a sweep manifest") if (root / MANIFEST).is_file() else {}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("summary", {}), dict):
        raise SpecError(f"{root / MANIFEST}: not a sweep manifest")
    flags = {t["name"]: {k: format_value(v) for k, v in t["flags"].items()}
             for t in manifest.get("trials", [])}
    trials = []
    for workdir in sorted(p for p in root.iterdir() if p.is_dir()):
        final, log = workdir / FINAL_METRICS, workdir / METRICS_LOG
        record = {"name": workdir.name, "flags": flags.get(workdir.name, {}), "metrics": {},
                  "status": "finished", "last_step": None}
        if final.is_file():
            record["metrics"] = _read_json(final, "valid JSON")
            if not isinstance(record["metrics"], dict):
                raise SpecError(f"{final}: expected a JSON object of metrics")
            if record["metrics"].get("time_limited"):  # a partial result: not ranked as final
                record.update(status="unfinished", last_step=record["metrics"].get("step"))
        elif log.is_file():
            record.update(status="unfinished", last_step=_last_step(log))
        else:
            continue
        trials.append(record)
    return trials, manifest.get("summary", {})


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
            return (1 if record["status"] == "finished" else 2, 0.0, record["name"])
        return (0, value if mode == "min" else -value, record["name"])
    return sorted(trials, key=key)


def summary_table(trials: list[dict[str, Any]], metric: str, mode: str) -> list[list[Any]]:
    """Header row plus one row per trial, best first: rank, trial, status, flags, metrics."""
    ranked = rank_trials(trials, metric, mode)
    flag_names = list(dict.fromkeys(name for record in ranked for name in record["flags"]))
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
    trials, defaults = collect_trials(root)
    if not trials:
        raise SpecError(f"{root}: no trial directories (with {FINAL_METRICS} or {METRICS_LOG}) "
                        "found")
    finished = [t for t in trials if t["status"] == "finished"]
    wanted = metric or defaults.get("metric") or "val_loss"
    if finished and not any(wanted in t["metrics"] for t in finished):
        available = sorted({name for t in finished for name in t["metrics"]})
        raise SpecError(f"no finished trial under {root} reports {wanted!r}; their "
                        f"{FINAL_METRICS} hold: {', '.join(available)}")
    metric, mode = summary_order(metric, mode, defaults)
    rows = summary_table(trials, metric, mode)
    markdown = (f"Sweep {root.name}: {len(finished)} of {len(trials)} trials finished, ranked by "
                f"{metric} ({_BETTER[mode]} is better)\n\n") + markdown_table(rows)
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
            prog="sweep.py", description="\n\n".join(__doc__.split("\n\n")[:2]),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("spec", help="sweep spec (.toml)")
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--dry_run", action="store_true",
                            help="print one line per trial (name, done/todo, flags); write nothing")
        action.add_argument("--slurm", action="store_true",
                            help="submit the unfinished trials as one SLURM job array")
        action.add_argument("--local", action="store_true",
                            help="run the unfinished trials here, one after another")
        parser.add_argument("--root", default=None, help="root work directory (overrides the spec)")
        parser.add_argument("--set", dest="overrides", action="append", default=[],
                            metavar="NAME=VALUE", help="override or add a fixed flag (repeatable)")
        parser.add_argument("--sbatch_args", action="append", default=[],
                            help='--slurm: extra sbatch options, e.g. --sbatch_args="--time=2:00:00 '
                                 "--partition=gpu\" (they override the spec's [slurm] table)")
        args = parser.parse_args(argv)
        sweep = load_sweep(args.spec, root=args.root,
                           overrides=[parse_override(text) for text in args.overrides])
        if args.dry_run:
            print(f"# sweep {sweep.name}: {len(sweep.trials)} trials of python -m {sweep.module}, "
                  f"base {sweep.base_flagfile}, root {sweep.root}, fixed flags: "
                  + (" ".join(format_flag(n, v) for n, v in sweep.fixed_flags.items()) or "none"),
                  file=sys.stderr)
            for line in dry_run_lines(sweep):
                print(line)
            return 0
        if args.local:
            return run_local(sweep)
        return submit_slurm(sweep, [part for text in args.sbatch_args for part in shlex.split(text)])
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
