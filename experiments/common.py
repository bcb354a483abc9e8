"""Flags and set-up shared by the trainers (absl lives here and in the entry points only).

Exit status of the trainers: 0 finished, 2 a user error (one message on stderr, nothing written:
mantra_jax.errors.UserError), 75 stopped by SIGTERM after saving a checkpoint (EX_TEMPFAIL of
sysexits.h, "try again later": rerun the same command to resume; launch/sweep.py counts such a
trial as unfinished), anything else a crash (with its traceback).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from absl import flags

from mantra_jax.errors import UserError
from mantra_jax.nn import config as config_lib

FLAGS = flags.FLAGS
PREEMPTED_EXIT_STATUS = 75  # os.EX_TEMPFAIL


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
    flags.DEFINE_float("learning_rate", loop["learning_rate"], "Adam learning rate.", lower_bound=0.0)
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
    """The common start of the checkpoint-evaluation commands: no stray arguments, quiet logging
    unless --verbosity is given, and the required flags present."""
    from absl import app
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not fv["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and matplotlib are chatty at INFO
    missing = [name for name in required if not fv[name].value]
    if missing:
        raise app.UsageError(f"missing flags: {', '.join('--' + m for m in missing)}")


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
