"""Where a report's numbers come from, and the one step choice of every checkpoint-reading command.

Every command that reads a checkpoint (experiments.evaluate, evaluate_imc, kcmi, sensitivity and
experiments.predict) takes ``--step``: ``best`` (the default: the step with the lowest validation
loss the trainer recorded), ``latest``, or a step number. Every report records, from
`checkpoint_record`:

    checkpoint     the checkpoint folder (absolute)
    step           the step whose weights were scored
    step_choice    what was asked for: "best", "latest" or the number
    step_reason    why that step: "best by validation loss", "latest", "asked for", or
                   "latest: no validation loss recorded" when best was asked of a run without one
    best_step, best_val_loss, latest_step   what the checkpoint's newest metadata says
    model_config   the network's configuration (mantra_jax.nn.config.to_dict)
    command        the command line that made the report

No JAX and no Orbax here (the step itself is read by mantra_jax.checkpoint), so entry points
can parse their flags without loading either.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

StepChoice = Union[str, int]  # "best", "latest" or a step number

DEFAULT_STEP = "best"
STEP_HELP = ("Checkpoint step to read: best (the step with the lowest validation loss the trainer "
             "recorded; the latest step when it recorded none), latest, or a step number.")
BEST_BY_VALIDATION = "best by validation loss"
LATEST = "latest"
ASKED_FOR = "asked for"
LATEST_NO_VALIDATION = "latest: no validation loss recorded"
# The trainer's resolved flags (experiments/common.py write_flags), in the run's work directory.
RUN_FLAGS_FILE = "flags.txt"


def parse_step(value: Any) -> StepChoice:
    """"best", "latest" or a non-negative step number, from a flag's text (or an int)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().lower()
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise ValueError(f"--step must be best, latest or a step number, got {value!r}")


def command_line(argv: Optional[Sequence[str]] = None, module: Optional[str] = None) -> str:
    """The command as typed: `python -m MODULE ARGS` for a module run, else the argv joined."""
    argv = list(sys.argv if argv is None else argv)
    if module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = getattr(spec, "name", None)
    if module:
        return shlex.join(["python", "-m", module, *argv[1:]])
    return shlex.join(argv)


RECORD_KEYS = ("checkpoint", "step", "step_choice", "step_reason", "best_step", "best_val_loss",
               "latest_step", "model_config", "command")


def checkpoint_record(directory, *, step: int, choice: StepChoice, reason: str, meta: dict,
                      model_config: dict, command: Optional[str] = None) -> dict:
    """The provenance entries of a report (see the module docstring), in a fixed order."""
    return {
        "checkpoint": str(Path(directory).absolute()),
        "step": int(step),
        "step_choice": choice,
        "step_reason": reason,
        "best_step": meta.get("best_step"),
        "best_val_loss": meta.get("best_val_loss"),
        "latest_step": meta.get("step"),
        "model_config": dict(model_config),
        "command": command_line() if command is None else command,
    }


def describe(record: dict) -> str:
    """One line for terminals and markdown reports: folder, step and why."""
    line = f"checkpoint {record['checkpoint']}, step {record['step']} ({record['step_reason']}"
    if record.get("step_reason") == BEST_BY_VALIDATION and record.get("best_val_loss") is not None:
        line += f": {record['best_val_loss']:.4f}"
    return line + ")"


def markdown_lines(run: dict) -> list[str]:
    """A report's run description as markdown lines: the checkpoint line, the command, and the
    other settings (the model configuration is left to the JSON report)."""
    lines = []
    if "step" in run and "checkpoint" in run:
        lines.append(describe(run))
    if run.get("command"):
        lines.append(f"command: `{run['command']}`")
    shown = set(RECORD_KEYS) if "step" in run else {"model_config", "command"}
    rest = {k: v for k, v in run.items() if k not in shown}
    if rest:
        lines.append(", ".join(f"{k}: {v}" for k, v in rest.items()))
    return lines


def read_run_flags(directory) -> dict[str, str]:
    """The trainer's flags (`--name=value` lines of flags.txt in a run's work directory); empty
    for a checkpoint without one (converted weights, a run started from Python)."""
    path = Path(directory) / RUN_FLAGS_FILE
    if not path.is_file():
        return {}
    flags = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("--") and "=" in line:  # booleans (--name, --noname) are not needed
            name, _, value = line[2:].partition("=")
            flags[name] = value
    return flags


def settings_from_checkpoint(checkpoint, asked: dict, trainer_flags: dict, defaults: dict) -> tuple[dict, list]:
    """Defaults a checkpoint knows come from it: each setting of `asked` left None takes the value
    of the trainer's flag `trainer_flags[name]` in the checkpoint's flags.txt (converted to the
    default's type), else `defaults[name]`. Returns (settings, names taken from the checkpoint).
    A photo folder taken from the checkpoint that is not a folder here is an error."""
    trained = read_run_flags(checkpoint)
    where = Path(checkpoint) / RUN_FLAGS_FILE
    settings, taken = {}, []
    for name, value in asked.items():
        if value is None and trainer_flags[name] in trained:
            text = trained[trainer_flags[name]]
            try:
                value = type(defaults[name])(text)
            except ValueError:
                raise ValueError(f"{where}: --{trainer_flags[name]}={text} is not a "
                                 f"{type(defaults[name]).__name__}") from None
            taken.append(name)
        settings[name] = defaults[name] if value is None else value
    if "data_dir" in taken and settings["data_dir"] and not Path(settings["data_dir"]).is_dir():
        raise ValueError(f"{settings['data_dir']}: the photo folder the checkpoint was trained on ({where}) "
                         "is not a folder here; pass --data_dir (the photos it was trained on, for the figures of "
                         "its card; or --data_dir= for the bundled photos)")
    return settings, taken


# A model card (README.md in the checkpoint folder) that says so in these words: not a forensic tool.
CARD_FILE = "README.md"
_NOT_FORENSIC = re.compile(r"not (?:a )?forensic tools?|not for forensics", re.IGNORECASE)


def card_caveat(*directories) -> Optional[str]:
    """The note every page of a run shows when the card (README.md in the checkpoint folder) of one
    of its models says it is not a forensic tool; None when none does."""
    said = []
    for directory in directories:
        if directory is None:
            continue
        try:
            text = (Path(directory) / CARD_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if _NOT_FORENSIC.search(text):
            said.append(str(directory))
    if not said:
        return None
    whose = (f"the card ({CARD_FILE}) of the model {said[0]} says so" if len(said) == 1 else
             f"the cards ({CARD_FILE}) of the models {' and '.join(said)} say so")
    return (f"Not a forensic tool: {whose}. Scores and maps show what the model responds to, not whether an "
            "image was manipulated: the ranking below is not a list of forgeries.")
