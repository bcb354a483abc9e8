"""Flags and set-up shared by the trainers (absl lives here and in the entry points only)."""
from __future__ import annotations

import logging
from pathlib import Path

from absl import flags

from mantra_jax.nn import config as config_lib

FLAGS = flags.FLAGS


def define_common_flags(default_workdir: str):
    flags.DEFINE_string("workdir", default_workdir, "Work directory: checkpoints, metrics, reports.")
    flags.DEFINE_string("data_dir", "", "Folder of pristine photos (recursive). Empty: the bundled photos.")
    flags.DEFINE_integer("seed", 0, "Seed of the initialisation and of the data.", lower_bound=0)
    flags.DEFINE_integer("batch_size", 64, "Global batch size (over every process and device).", lower_bound=1)
    flags.DEFINE_integer("epochs", 100, "Epochs.", lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", 1000, "Batches per epoch.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.", lower_bound=0.0)
    flags.DEFINE_integer("plateau_patience", 20, "Epochs without validation-loss improvement before the "
                         "learning rate is halved.", lower_bound=1)
    flags.DEFINE_float("plateau_factor", 0.5, "Learning-rate factor on a plateau.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype (parameters stay float32).")
    flags.DEFINE_integer("workers", 0, "grain worker processes for the training data (0: in process).", lower_bound=0)
    flags.DEFINE_integer("checkpoint_every", 1000, "Checkpoint interval in steps (and at every epoch end).", lower_bound=1)
    flags.DEFINE_integer("keep", 3, "Checkpoints kept besides the best one.", lower_bound=1)
    flags.DEFINE_integer("log_every", 50, "Steps between progress lines.", lower_bound=1)
    flags.DEFINE_float("max_seconds", 0, "Wall seconds after which no new step starts (from the start of training, "
                       "compilation included); the run then validates and writes its report, and the same "
                       "command resumes it. 0: no limit.", lower_bound=0)
    flags.DEFINE_integer("val_samples", 3800, "Samples in the fixed validation set.", lower_bound=1)
    flags.DEFINE_integer("val_batch_size", 64, "Validation batch size (global).", lower_bound=1)
    flags.DEFINE_enum("backbone", "released", list(config_lib.BACKBONES), "Featex widths/depth (Tables 2 and 5).")
    flags.DEFINE_enum("first_layer", "combined", list(config_lib.FIRST_LAYERS), "First layer (Table 3).")
    flags.DEFINE_integer("regular_filters", 4, "Regular 5x5 filters in the combined first layer.", lower_bound=0)
    flags.DEFINE_float("width_scale", 1.0, "Multiplies every width (small networks for smoke runs).",
                       lower_bound=0.01, upper_bound=4.0)
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs).")
    flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run (0: auto-detect).", lower_bound=0)
    flags.DEFINE_integer("process_id", -1, "This process's index (-1: auto-detect).", lower_bound=-1)
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
        precision=FLAGS.precision, checkpoint_every=FLAGS.checkpoint_every, keep=FLAGS.keep,
        log_every=FLAGS.log_every, max_seconds=FLAGS.max_seconds or None)


def photo_index(data_dir: str, patch: int = 256):
    from mantra_jax.data import bundled, photos

    folder = data_dir or bundled.default_photo_dir()
    index = photos.build_patch_index(folder, patch=patch)
    import jax

    if jax.process_index() == 0:
        print(index.summary(), flush=True)
    return index


def write_flags(workdir: str):
    """The resolved flags, as a flagfile that reproduces the run."""
    import jax

    if jax.process_index() != 0:
        return
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "flags.txt").write_text(FLAGS.flags_into_string())




def print_summary(summary: dict):
    """The final validation numbers, once (process 0)."""
    import jax

    if jax.process_index() == 0:
        print({k: round(v, 4) for k, v in summary.items() if isinstance(v, float)}, flush=True)


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
