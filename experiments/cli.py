"""The console scripts, and the shipped flagfiles found from any directory (experiments.common.run,
the one way every command starts, resolves each --flagfile through `resolve_flagfiles`).

Each command runs as `python -m experiments.<name>` and, once the package is installed, as the
console script `mantra-<name>` (underscores become hyphens: `mantra-evaluate-imc`); both go through
`experiments.common.run`. The flagfiles of experiments/flags/ are installed with the package, so that

    python -m experiments.imc385 --flagfile=experiments/flags/imc385_smoke.flags
    mantra-imc385 --flagfile=experiments/flags/imc385_smoke.flags

work in any directory: a `--flagfile` whose path does not exist as given, and that names a
shipped file as `experiments/flags/NAME` or as `NAME` alone, reads the shipped file. A path that
exists (the repository's own experiments/flags/ from its root, or a file of the user's) is read as
given.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Sequence

FLAGS_DIR = Path(__file__).resolve().parent / "flags"
_SHIPPED_PREFIX = "experiments/flags/"
# The modules that are commands (each with `main(argv)`), in the order `mantra-*` lists them.
COMMANDS = ("imc385", "mantranet", "predict", "evaluate", "evaluate_imc", "kcmi", "sensitivity", "convert",
            "export", "study", "trace_study")


def shipped_flagfile(path: str) -> str:
    """`path`, or the shipped flagfile it names when `path` does not exist as given."""
    if os.path.exists(os.path.expanduser(path)):
        return path
    normalised = path.replace(os.sep, "/")
    name = normalised[len(_SHIPPED_PREFIX):] if normalised.startswith(_SHIPPED_PREFIX) else normalised
    if "/" not in name and (FLAGS_DIR / name).is_file():
        return str(FLAGS_DIR / name)
    return path


def resolve_flagfiles(argv: Sequence[str]) -> list[str]:
    """argv with each --flagfile (`--flagfile=P`, `--flagfile P`, one dash too) passed through
    `shipped_flagfile`."""
    out, argv = [], list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        for flag in ("--flagfile", "-flagfile"):
            if arg.startswith(flag + "="):
                arg = f"{flag}={shipped_flagfile(arg[len(flag) + 1:])}"
            elif arg == flag and i + 1 < len(argv):
                out.append(arg)
                i += 1
                arg = shipped_flagfile(argv[i])
        out.append(arg)
        i += 1
    return out


def _console_script(name: str) -> Callable[[], None]:
    def entry() -> None:
        from experiments import common

        module = importlib.import_module(f"experiments.{name}")
        common.run(module.main, trainer=getattr(module, "TRAINER", None))

    entry.__name__ = name
    entry.__doc__ = f"The console script mantra-{name.replace('_', '-')}: python -m experiments.{name}."
    return entry


# The console scripts of pyproject.toml ([project.scripts]: mantra-<name> = experiments.cli:<name>).
imc385, mantranet, predict, evaluate, evaluate_imc, kcmi, sensitivity, convert, export, study, trace_study = (
    _console_script(name) for name in COMMANDS)
