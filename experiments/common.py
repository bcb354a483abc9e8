"""What every command shares: `run` (how each command's main starts and ends), the trainers' flags
and set-up, and the step choice of the checkpoint-reading commands (absl lives here and in the
entry points only).

Exit status of every command started by `run`: 0 done, 2 a user error (one message on stderr,
`error: ...`, no traceback: a flag that does not parse or is out of range, a usage mistake, a
mantra_jax.errors.UserError), 75 stopped by SIGTERM in a trainer (EX_TEMPFAIL of sysexits.h, "try
again later": rerun the same command to resume; launch/sweep.py counts such a trial as
unfinished), 143 stopped by SIGTERM in the other commands, anything else a crash (with its
traceback). Some commands add their own (experiments.predict: 1 when no image was processed).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
import warnings
from pathlib import Path

from absl import app, flags

from mantra_jax import errors
from mantra_jax.errors import UserError
from mantra_jax.nn import config as config_lib

FLAGS = flags.FLAGS
PREEMPTED_EXIT_STATUS = 75  # os.EX_TEMPFAIL
STOPPED_EXIT_STATUS = 128 + 15  # what SIGTERM's default action reports
USER_ERROR_EXIT_STATUS = 2
_HELP_ARGS = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")


_TRAINER = []  # set by define_common_flags: this command is a trainer


def run(main, *, trainer: bool | None = None, argv=None):
    """Runs a command's main (in place of absl's app.run): the one way every command starts.

    - `--help` shows the command's docstring and the flags a user sets for it: its own and the
      shared ones of this module it defines (`--helpfull` still lists every library's), exit 0;
    - a flag that does not parse, is out of its range or is a float that is not finite, an
      app.UsageError and a UserError: one `error: ...` message on stderr, exit status 2;
    - library INFO logging off unless --verbosity (or a trainer's --log_level) asks for it;
    - one SIGTERM handler from start to end (mantra_jax.errors.sigterm): the `with` blocks on the
      way out run (locks are released), then a trainer exits 75, any other command 143.

    `trainer` (None: whether the command defined the trainers' flags) says which; `argv` (None:
    sys.argv) lets tests run a command in process.
    """
    trainer = bool(_TRAINER) if trainer is None else trainer
    if argv is None:
        from experiments import cli  # the shipped flagfiles, found from any directory

        argv = cli.resolve_flagfiles(sys.argv)
    app.run(functools.partial(_main, main, trainer), argv=argv, flags_parser=functools.partial(_parse_flags, main))


def fail(message: str, status: int = USER_ERROR_EXIT_STATUS):
    """Ends the program with one message on stderr."""
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _parse_flags(main, argv):
    end = argv.index("--") if "--" in argv else len(argv)
    wants_help = any(arg in _HELP_ARGS for arg in argv[1:end])
    if wants_help:  # the other flags are parsed first (a flagfile is checked), then the help shown
        argv = [arg for i, arg in enumerate(argv) if i >= end or arg not in _HELP_ARGS]
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        if not (wants_help and "must have a value other than None" in str(e)):  # a required flag: help anyway
            fail(f"{e} (--help lists the flags)")
    if wants_help:
        print(command_help(main))
        sys.exit(0)
    seen = set()
    for name, flag in FLAGS._flags().items():  # noqa: SLF001 - every flag once, short names too
        if id(flag) in seen or not isinstance(flag.parser, flags.FloatParser):
            continue
        seen.add(id(flag))
        if flag.value is not None and not math.isfinite(flag.value):
            fail(f"--{flag.name}={flag.value}: not a finite number")
    return rest


def _main(main, trainer: bool, argv):
    from absl import logging as absl_logging

    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and matplotlib are chatty at INFO
        logging.getLogger().setLevel(logging.WARNING)
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        with errors.sigterm():
            return main(argv)
    except app.UsageError as e:
        fail(f"{e} (--help lists the flags)")
    except UserError as e:
        fail(str(e))
    except errors.Stopped as e:
        sys.stdout.flush()
        if trainer:
            print(f"stopped by SIGTERM {e}; rerun the same command to resume (exit status "
                  f"{PREEMPTED_EXIT_STATUS})", file=sys.stderr, flush=True)
            sys.exit(PREEMPTED_EXIT_STATUS)
        print("stopped by SIGTERM before the end; what was written so far stays (exit status "
              f"{STOPPED_EXIT_STATUS})", file=sys.stderr, flush=True)
        sys.exit(STOPPED_EXIT_STATUS)
    finally:
        warnings.showwarning = shown


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """A warning as the user reads it: `warning: <message>` (no source line of the library)."""
    print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)


def _module_name(main) -> str:
    return sys.argv[0] if main.__module__ == "__main__" else main.__module__


def command_help(main) -> str:
    """The command's docstring, then its own flags and the shared ones it defines, by group."""
    doc = (sys.modules[main.__module__].__doc__ or "").strip()
    parts = [doc, ""] if doc else []
    groups = [("flags of this command", _module_name(main)), ("shared flags (experiments/common.py)", __name__)]
    for title, module in groups:
        if FLAGS.get_flags_for_module(module):
            body = FLAGS.module_help(module).split("\n", 1)[1]
            parts += [f"{title}:", body, ""]
    parts.append("--helpfull lists every flag, the libraries' too.")
    return "\n".join(parts)


COMPILATION_CACHE_ENV = "MANTRA_JAX_COMPILATION_CACHE"


def default_compilation_cache() -> str:
    """$MANTRA_JAX_COMPILATION_CACHE when set (empty: no cache), else $XDG_CACHE_HOME/mantra_jax/xla
    (~/.cache/mantra_jax/xla)."""
    if COMPILATION_CACHE_ENV in os.environ:
        return os.environ[COMPILATION_CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mantra_jax", "xla")


def define_compilation_cache_flag():
    flags.DEFINE_string("compilation_cache", default_compilation_cache(), "Folder of JAX's persistent compilation "
                        "cache: programs compiled by an earlier run are read from it instead of compiled again. "
                        f"Empty: no cache. Default: ${COMPILATION_CACHE_ENV} when set, else "
                        "$XDG_CACHE_HOME/mantra_jax/xla (~/.cache/mantra_jax/xla).")


def use_compilation_cache(folder: str) -> None:
    """JAX's persistent compilation cache in `folder` (nothing when empty): what an entry point
    sets up, never the library (it is process-wide)."""
    if not folder:
        return
    import jax  # noqa: PLC0415

    jax.config.update("jax_compilation_cache_dir", str(Path(folder).expanduser()))


def define_common_flags(default_workdir: str):
    """The trainers' flags; those of mantra_jax.train.loop.LoopConfig take its defaults."""
    from mantra_jax.train.loop import LoopConfig

    loop = {f.name: f.default for f in dataclasses.fields(LoopConfig)}
    _TRAINER.append(True)
    flags.DEFINE_string("workdir", default_workdir, "Work directory: checkpoints, metrics, reports. It belongs to "
                        "one run: a rerun with other settings is refused (see --overwrite).")
    flags.DEFINE_bool("overwrite", loop["overwrite"], "Start over: delete the earlier run in --workdir (checkpoints/, "
                      "metrics.jsonl, tensorboard/, the reports, run.json, model_config.json, flags.txt; other "
                      "files stay) instead of resuming it or refusing other settings.")
    flags.DEFINE_string("data_dir", "", "Folder of pristine photos (recursive). Empty: the bundled photos.")
    flags.DEFINE_integer("seed", loop["seed"], "Seed of the initialisation and of the data.", lower_bound=0)
    flags.DEFINE_integer("batch_size", loop["batch_size"], "Global batch size (over every process and device).",
                         lower_bound=1)
    flags.DEFINE_integer("epochs", loop["epochs"], "Epochs.", lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", loop["steps_per_epoch"], "Batches per epoch.", lower_bound=1)
    flags.DEFINE_float("learning_rate", loop["learning_rate"], "Adam learning rate (> 0).", lower_bound=0.0)
    flags.register_validator("learning_rate", lambda value: value > 0, "--learning_rate must be > 0")
    flags.DEFINE_integer("plateau_patience", loop["plateau_patience"], "Epochs without validation-loss improvement "
                         "before the learning rate is halved.", lower_bound=1)
    flags.DEFINE_float("plateau_factor", loop["plateau_factor"], "Learning-rate factor on a plateau.", lower_bound=0.0,
                       upper_bound=1.0)
    flags.DEFINE_float("grad_clip_norm", loop["grad_clip_norm"], "Gradients rescaled to at most this global norm "
                       "before the optimiser (0: off); see mantra_jax.train.loop.training_optimizer.", lower_bound=0.0)
    flags.DEFINE_enum("precision", loop["precision"], config_lib.PRECISIONS,
                      "Computation dtype (parameters stay float32).")
    flags.DEFINE_integer("workers", 0, "grain worker processes for the training data (0: in process).", lower_bound=0)
    flags.DEFINE_integer("checkpoint_every", loop["checkpoint_every"], "Checkpoint interval in steps (and at every "
                         "epoch end).", lower_bound=1)
    flags.DEFINE_integer("keep", loop["keep"], "Checkpoints kept besides the best one.", lower_bound=1)
    flags.DEFINE_integer("log_every", loop["log_every"], "Steps between progress lines.", lower_bound=1)
    flags.DEFINE_float("max_seconds", loop["max_seconds"] or 0, "Wall seconds after which no new step starts (from "
                       "the start of training, compilation included); the run then validates and writes its report, "
                       "and the same command resumes it. 0: no limit.", lower_bound=0)
    flags.DEFINE_integer("val_samples", 3800, "Samples in the fixed validation set.", lower_bound=1)
    flags.DEFINE_integer("val_batch_size", 64, "Validation batch size (global).", lower_bound=1)
    flags.DEFINE_enum("backbone", "released", list(config_lib.BACKBONES), "Featex widths/depth (Tables 2 and 5).")
    flags.DEFINE_enum("first_layer", "combined", list(config_lib.FIRST_LAYERS), "First layer (Table 3).")
    flags.DEFINE_integer("regular_filters", 4, "Regular 5x5 filters in the combined first layer.", lower_bound=0)
    flags.DEFINE_float("width_scale", 1.0, "Multiplies every width (small networks for smoke runs).",
                       lower_bound=0.01, upper_bound=4.0)
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs; empty: detected).")
    flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run (0: detected; 1: run alone).", lower_bound=0)
    flags.DEFINE_integer("process_id", -1, "This process's index (-1: detected).", lower_bound=-1)
    flags.DEFINE_enum("log_level", "warning", ["debug", "info", "warning", "error"], "Python logging level.")


def setup():
    """Logging and the multi-process run (before any JAX computation)."""
    logging.basicConfig(level=getattr(logging, FLAGS.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(FLAGS.log_level)
    from mantra_jax.train import distributed

    distributed.initialize(
        coordinator_address=FLAGS.coordinator_address or None,
        num_processes=FLAGS.num_processes or None,
        process_id=None if FLAGS.process_id < 0 else FLAGS.process_id,
    )


def loop_config():
    from mantra_jax.train.loop import LoopConfig

    return LoopConfig(
        workdir=FLAGS.workdir, seed=FLAGS.seed, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch, learning_rate=FLAGS.learning_rate,
        plateau_patience=FLAGS.plateau_patience, plateau_factor=FLAGS.plateau_factor,
        precision=FLAGS.precision, grad_clip_norm=FLAGS.grad_clip_norm,
        checkpoint_every=FLAGS.checkpoint_every, keep=FLAGS.keep,
        log_every=FLAGS.log_every, overwrite=FLAGS.overwrite, max_seconds=FLAGS.max_seconds or None)


def photo_index(data_dir: str, patch: int = 256):
    from mantra_jax.data import bundled, photos

    if data_dir and not Path(data_dir).is_dir():
        raise UserError(f"--data_dir {data_dir}: " + ("not a folder" if Path(data_dir).exists() else "does not exist"))
    folder = data_dir or bundled.default_photo_dir()
    index = photos.build_patch_index(folder, patch=patch)
    index.require("train", "val")
    import jax

    if jax.process_index() == 0:
        print(index.summary(), flush=True)
    return index


def run_files() -> dict:
    """The files the trainer writes into its work directory once the run is accepted: the
    resolved flags, as a flagfile that reproduces the run."""
    return {"flags.txt": FLAGS.flags_into_string()}


def finish(summary: dict):
    """The final validation numbers, once (process 0); after SIGTERM, exit status 75."""
    import jax

    if summary.get("preempted"):
        print(f"stopped by SIGTERM at step {summary['step']} after saving a checkpoint; rerun the same "
              f"command to resume (exit status {PREEMPTED_EXIT_STATUS})", file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT_STATUS)
    if jax.process_index() == 0:
        rows = [[k, v] for k, v in summary.items() if isinstance(v, float)]
        step = summary.get("step")
        print_table(["metric", "value"], rows, title="final validation" + (f" (step {step})" if step else ""))


def start_evaluation_cli(argv, fv, required):
    """The common start of the checkpoint-evaluation commands: no stray arguments, the required
    flags present, an --out that can be a folder."""
    from mantra_jax import workdir

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    missing = [name for name in required if not fv[name].value]
    if missing:
        raise app.UsageError(f"missing flags: {', '.join('--' + m for m in missing)}")
    if "out" in fv and fv["out"].value:
        workdir.check_output_folder(fv["out"].value)


class _StepParser(flags.ArgumentParser):
    """--step: best | latest | a step number (mantra_jax.provenance.parse_step)."""

    syntactic_help = "best | latest | a step number"

    def parse(self, argument):
        from mantra_jax import provenance

        return provenance.parse_step(argument)

    def flag_type(self):
        return "string"


def define_step_flag(flag_values: flags.FlagValues = FLAGS):
    """The step choice every checkpoint-reading command takes, with its one default and help."""
    from mantra_jax import provenance

    flags.DEFINE(_StepParser(), "step", provenance.DEFAULT_STEP, provenance.STEP_HELP, flag_values=flag_values)


def print_table(header, rows, title: str = ""):
    """A short summary table on stdout (markdown, so it pastes into notes as it is)."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        return "-" if value is None else str(value)

    lines = [title, ""] if title else []
    lines += ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    print("\n".join(lines), flush=True)


def define_out_flags(help_text: str = "Output folder (created).", flag_values: flags.FlagValues = FLAGS):
    """--out and --overwrite, the same for every command that writes an output or report folder."""
    flags.DEFINE_string("out", None, help_text + " A folder that already holds files is refused unless "
                        "--overwrite.", flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace the earlier run in --out: delete the files it recorded "
                      "(.outputs.json) before writing; other files stay.", flag_values=flag_values)


def output_folder(what: str, checkpoint: str | None = None, flag_values: flags.FlagValues = FLAGS):
    """The --out folder for this run (mantra_jax.workdir.output_folder: refused when it holds files,
    unless --overwrite). A `checkpoint` that is no checkpoint is refused first, before --out is touched."""
    from mantra_jax import workdir

    if checkpoint:
        from mantra_jax.checkpoint import read_model_config

        read_model_config(checkpoint)
    return workdir.output_folder(flag_values.out, what=what, overwrite=flag_values.overwrite)
