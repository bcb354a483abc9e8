"""The training loop shared by IMC pretraining and end-to-end ManTra-Net training.

A task (mantra_jax/train/imc.py, mantra_jax/train/mantranet.py) says what is learnt: the model,
the loss, the data, the validation metrics and the final report. This module says how: one
`jax.jit` step over a ("data",) mesh of every device (parameters replicated, batch split,
gradients averaged by the compiler, state donated), the constraint projection after each update,
validation and a reduce-on-plateau schedule each epoch, Orbax checkpoints that resume exactly,
an optional wall-time limit (`max_seconds`), and what a person sees (progress line,
metrics.jsonl, TensorBoard).

A work directory belongs to one run. The run holds its lock (mantra_jax.workdir) while it runs,
and records in run.json what defines it (`run_settings`): the task (with its level), the model
configuration, the task's data and sampling settings (photo folder, crop or patch size, validation
set, initialisation, ...), the seed, the global batch size, the learning rate and its plateau
schedule, the steps per epoch and the precision. A rerun with any of these changed is refused
before anything is written; `overwrite=True` (--overwrite) deletes the earlier run first. The
rest may change on a resume: `epochs` (a run can be extended: its steps are those of a longer run;
a work directory already past the new end is refused), checkpoint_every, keep, log_every, the
device count, the data-loading workers, asynchronous checkpointing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mantra_jax import checkpoint as ckpt_lib
from mantra_jax import workdir as workdir_lib
from mantra_jax.errors import BadSetting, UserError, deferred_sigterm, sigterm, stop_point
from mantra_jax.metrics import progress as reporting
from mantra_jax.nn import config as config_lib
from mantra_jax.nn import model as model_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    workdir: str
    seed: int = 0
    batch_size: int = 64  # global, over every process and device
    epochs: int = 100
    steps_per_epoch: int = 1000
    learning_rate: float = 1e-4
    plateau_patience: int = 20  # epochs without validation-loss improvement ...
    plateau_factor: float = 0.5  # ... before the learning rate is multiplied by this
    precision: str = "float32"
    checkpoint_every: int = 1000
    keep: int = 3
    log_every: int = 50
    num_devices: Optional[int] = None  # None: every device
    async_checkpoint: bool = True
    grad_clip_norm: float = 1.0  # gradients rescaled to at most this global norm (training_optimizer); 0: off
    overwrite: bool = False  # delete the earlier run in workdir (whatever its settings) and start over
    # Wall seconds from the start of `train` (initialisation, validation set and compilation
    # included) after which no new step starts: the run saves a checkpoint, validates and writes
    # its report as at the end; the same command resumes it. None: no limit.
    max_seconds: Optional[float] = None

    def __post_init__(self):
        config_lib.dtype(self.precision)  # a known precision name
        for name in ("batch_size", "epochs", "steps_per_epoch", "checkpoint_every", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise BadSetting(f"{name} must be >= 1, got {getattr(self, name)}")
        # Written so that NaN fails each test (every comparison with NaN is false).
        if not 0 < self.learning_rate < math.inf:
            raise BadSetting(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.grad_clip_norm < math.inf:
            raise BadSetting(f"grad_clip_norm must be >= 0 (0: off), got {self.grad_clip_norm}")
        if not 0 <= self.plateau_factor <= 1:
            raise BadSetting(f"plateau_factor must be in [0, 1], got {self.plateau_factor}")
        if self.max_seconds is not None and not 0 < self.max_seconds < math.inf:
            raise BadSetting(f"max_seconds must be > 0 (or None: no limit), got {self.max_seconds}")
        ckpt_lib.check_directory_name(self.workdir)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclasses.dataclass
class Task:
    """What a trainer learns. Functions marked (jit) are traced inside the compiled steps."""

    name: str
    model_cfg: Any
    init_variables: Callable[[jax.Array], dict]  # rng -> {"params", "batch_stats"}
    optimizer: optax.GradientTransformation
    # (jit) (params, batch_stats, batch, dtype) -> (loss, (new batch_stats, {metric: scalar}))
    loss: Callable
    # (jit) (variables, batch, dtype) -> {name: summed array}; summed again over batches on the host
    eval_sums: Callable
    summarize: Callable[[dict], dict]  # host: summed eval arrays -> {"val_loss": ..., ...}
    # (seed, shard_index, shard_count, per-process batch size) -> grain IterDataset of dict batches
    train_dataset: Callable
    val_batches: Callable[[], list]  # the fixed validation set, as global batches (numpy)
    final_report: Callable[[Path, dict, dict], None]  # (workdir, summary, eval sums) -> files
    # What else defines the run (data folder, crop, validation set, ...: JSON values), and the glob
    # patterns of the files final_report writes (deleted with the run by --overwrite).
    settings: dict = dataclasses.field(default_factory=dict)
    outputs: tuple = ()


def training_optimizer(task: Task, grad_clip_norm: float) -> optax.GradientTransformation:
    """The task's optimiser after a rescaling of the gradients to global norm at most
    `grad_clip_norm` (0: the task's optimiser alone); the one the trainer initialises and steps.

    Why every trainer clips: at initialisation the per-pixel L2 normalisation of Featex divides by
    the small feature norms of flat patches, and the first gradients can be hundreds of times the
    later ones (grad norm 288 at step 1, then about 0.8, measured for the 1/8-width IMC-385 run of
    the study). Adam's second moment remembers that first step for about 1/(1 - beta2) = 1,000
    steps, and its updates shrink by the same factor: that run stayed at the uniform loss ln 380
    for 750 steps.
    """
    if not grad_clip_norm:
        return task.optimizer
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm), task.optimizer)


def initial_state(task: Task, variables: dict, grad_clip_norm: float) -> dict:
    """The train state of `variables`: {"params", "batch_stats", "opt_state"}."""
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": training_optimizer(task, grad_clip_norm).init(variables["params"])}


def make_train_step(task: Task, grad_clip_norm: float, dtype) -> Callable:
    """The trainer's step, not jitted: (state, batch, lr_scale) -> (state, metrics). The loss and
    its gradient, the optimiser of `training_optimizer` with its updates scaled by `lr_scale` (the
    plateau schedule), then the model's constraint projection. Metrics: the task's, the loss, and
    the gradients' global norm before clipping."""
    optimizer = training_optimizer(task, grad_clip_norm)

    def train_step(state, batch, lr_scale):
        def loss_fn(params):
            return task.loss(params, state["batch_stats"], batch, dtype)

        (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        updates = jax.tree.map(lambda u: u * lr_scale, updates)  # Adam is scale-free: this scales the lr
        params = model_lib.project(optax.apply_updates(state["params"], updates), task.model_cfg)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, metrics

    return train_step


def make_eval_step(task: Task, dtype) -> Callable:
    """The validation step, not jitted: (variables, batch) -> the task's eval sums."""
    return lambda variables, batch: task.eval_sums(variables, batch, dtype)


# What a trainer writes into its work directory (besides Task.outputs): --overwrite deletes these.
RUN_ENTRIES = (workdir_lib.RUN_FILE, ckpt_lib.CONFIG_FILE, ckpt_lib.STEPS_DIR, "metrics.jsonl",
               "tensorboard", "final_metrics.json", "flags.txt")


def run_settings(task: Task, cfg: LoopConfig) -> dict:
    """What defines a run (recorded in run.json; see the module docstring)."""
    return {"task": task.name, "model": config_lib.to_dict(task.model_cfg), **task.settings,
            **{k: getattr(cfg, k) for k in ("seed", "batch_size", "learning_rate", "steps_per_epoch",
                                            "plateau_patience", "plateau_factor", "precision", "grad_clip_norm")}}


class NonFiniteLoss(FloatingPointError):
    pass


def _on_any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true where it is true on any process: every process must stop at the same step."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.array(flags, dtype=bool)))
    return tuple(bool(f) for f in np.any(gathered.reshape(-1, len(flags)), axis=0))


def make_mesh(num_devices: Optional[int] = None):
    devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
    return jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def global_batch(local: dict, sharding) -> dict:
    """This process's part of a batch -> global arrays split over the data axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def process_slice(batch: dict) -> dict:
    """This process's rows of a global host batch (every process holds the same validation set)."""
    n, i = jax.process_count(), jax.process_index()
    size = len(next(iter(batch.values()))) // n
    return {k: v[i * size : (i + 1) * size] for k, v in batch.items()}


def train(task: Task, cfg: LoopConfig, *, on_step: Optional[Callable[[int], None]] = None,
          files: Optional[dict] = None) -> dict:
    """Runs (or resumes) training in `cfg.workdir`; returns the final validation summary, or
    {"preempted": True, "step": s} after SIGTERM.

    Refused with a UserError before anything is written: batch sizes the devices cannot split, a
    work directory locked by another run or holding a run of other settings (see the module
    docstring). `files` ({name: text}, e.g. the entry point's flags.txt) are written into the
    work directory once the run is accepted.
    """
    started = time.monotonic()
    workdir = Path(cfg.workdir).absolute()
    with sigterm():  # from here to the report, SIGTERM stops the run losing nothing (errors.sigterm)
        stop_point("while starting, before the work directory was touched: nothing was lost")
        return _train_locked(task, cfg, workdir, on_step, files, started)


def _train_locked(task: Task, cfg: LoopConfig, workdir: Path, on_step, files, started: float) -> dict:
    # 1. Devices: one ("data",) mesh; parameters replicated, batches split.
    mesh = make_mesh(cfg.num_devices)
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if cfg.batch_size % n_dev or cfg.batch_size % n_proc:
        raise UserError(f"the batch size {cfg.batch_size} (--batch_size) must be divisible by the "
                        f"{n_dev} devices and the {n_proc} processes")
    val_batches = task.val_batches()  # the fixed validation set
    bad = sorted({len(next(iter(b.values()))) for b in val_batches if len(next(iter(b.values()))) % n_dev})
    if bad or not val_batches:
        raise UserError(f"the validation batch size {bad[0]} (--val_batch_size) must be divisible by the "
                        f"{n_dev} devices" if bad else "the validation set is empty")

    with contextlib.ExitStack() as stack:
        _on_process_0(lambda: stack.enter_context(workdir_lib.lock(workdir, what="training run")))
        _on_process_0(lambda: _start_run(workdir, task, cfg, files or {}))
        return _train(task, cfg, workdir, mesh, val_batches, on_step, started)


def _on_process_0(fn):
    """Runs `fn` on process 0; a UserError there stops every process."""
    error = None
    if jax.process_index() == 0:
        try:
            fn()
        except UserError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        failed = bool(np.any(multihost_utils.process_allgather(np.array(error is not None))))
        if failed and error is None:
            raise UserError("process 0 refused to start the run (its output says why)")
    if error is not None:
        raise error


def _start_run(workdir: Path, task: Task, cfg: LoopConfig, files: dict):
    """Checks (or, with overwrite, deletes) the earlier run in `workdir`, then records this one."""
    settings = run_settings(task, cfg)
    recorded = workdir_lib.read_run(workdir)
    if recorded is None and (workdir / ckpt_lib.CONFIG_FILE).is_file():  # from before run.json
        recorded = {"model": config_lib.to_dict(ckpt_lib.read_model_config(workdir))}
    if cfg.overwrite:
        entries = RUN_ENTRIES + tuple(task.outputs)
        if workdir_lib.read_run(workdir) is None:  # no record: what is there is not known to be a run's
            present = workdir_lib.present(workdir, entries)
            if present:
                raise UserError(
                    f"--overwrite deletes only what a run recorded as its own, and {workdir} holds no run "
                    f"record ({workdir_lib.RUN_FILE}) but {', '.join(present)}. Nothing was deleted: use a "
                    f"new --workdir, or delete those yourself if they are an old run's.")
        deleted = workdir_lib.delete_run(workdir, entries)
        if deleted:
            print(f"--overwrite: deleted the earlier run in {workdir}: {', '.join(deleted)}",
                  file=sys.stderr, flush=True)
    steps = ckpt_lib.saved_steps(workdir)
    if not cfg.overwrite:
        workdir_lib.check_run(workdir, settings, recorded)
        if steps and steps[-1] > cfg.total_steps:
            raise UserError(
                f"{workdir} holds a run at step {steps[-1]}, past the {cfg.total_steps} steps asked "
                f"for (--epochs {cfg.epochs} x --steps_per_epoch {cfg.steps_per_epoch}). Nothing was "
                f"changed: give more --epochs, use another --workdir, or start over with --overwrite.")
    if recorded is not None or not steps or cfg.overwrite:
        workdir_lib.write_run(workdir, settings)  # else once a step restores (see _train)
    ckpt_lib.write_model_config(workdir, task.model_cfg)
    for name, text in files.items():
        (workdir / name).write_text(text)


def _train(task: Task, cfg: LoopConfig, workdir: Path, mesh, val_batches, on_step, started: float) -> dict:
    stop_point("while starting, before any step: nothing was lost (the work directory holds what it held)")
    is_main = jax.process_index() == 0
    dtype = config_lib.dtype(cfg.precision)
    n_proc = jax.process_count()
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    # 2. Model and optimiser state, initialised from the seed.
    state = initial_state(task, task.init_variables(jax.random.key(cfg.seed)), cfg.grad_clip_norm)
    state = jax.device_put(state, replicated)
    abstract_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)

    # 3. Data: this process's shard of the training stream.
    train_iter = iter(task.train_dataset(cfg.seed, jax.process_index(), n_proc, cfg.batch_size // n_proc))

    # 4. Resume from the newest readable checkpoint of this work directory, if any.
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=cfg.keep, async_save=cfg.async_checkpoint)
    meta = {"step": 0, "epoch": 0, "lr_scale": 1.0, "best_val_loss": None, "best_step": None,
            "bad_epochs": 0, "seed": cfg.seed, "task": task.name}
    restored = checkpointer.restore_latest(abstract_state, train_iter)
    if restored is not None:
        state, meta = restored
        if meta.get("seed") != cfg.seed:
            raise UserError(f"{workdir} holds a run with seed {meta.get('seed')}, not {cfg.seed}")
        log.info("resuming from step %d of %s", meta["step"], workdir)
    if is_main:  # rows past the step resumed from (none when starting) are from a lost attempt
        reporting.truncate_after(workdir / "metrics.jsonl", int(meta["step"]))
        if workdir_lib.read_run(workdir) is None:  # checkpoints without a run record: they fit
            workdir_lib.write_run(workdir, run_settings(task, cfg))
    writer = reporting.MetricsWriter(workdir, enabled=is_main)

    # 5. The compiled steps.
    train_step = jax.jit(make_train_step(task, cfg.grad_clip_norm, dtype), in_shardings=(replicated, split, None),
                         out_shardings=(replicated, replicated), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(task, dtype),
                        in_shardings=(replicated, split), out_shardings=replicated)

    def evaluate(state):
        sums = None
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        for batch in val_batches:
            out = jax.device_get(eval_step(variables, global_batch(process_slice(batch), split)))
            sums = out if sums is None else jax.tree.map(np.add, sums, out)
        return task.summarize(sums), sums

    pending: list = []  # (step, metrics on device): fetched at log points, not every step
    last_flush = {"step": None, "time": None}  # for the samples/s between two log points

    def flush(step):
        rows = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, rows):
            if not math.isfinite(float(m["loss"])):
                last = checkpointer.steps()
                raise NonFiniteLoss(
                    f"non-finite loss ({float(m['loss'])}) at step {s}; stopping. The last good "
                    f"checkpoint is step {last[-1] if last else 'none'} in {workdir / ckpt_lib.STEPS_DIR}")
        now = time.perf_counter()
        if rows:
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            if last_flush["step"] is not None and now > last_flush["time"]:  # the first row holds compilation
                mean["samples_per_s"] = (step - last_flush["step"]) * cfg.batch_size / (now - last_flush["time"])
            writer.write(step, dict(mean, lr=cfg.learning_rate * meta["lr_scale"]), kind="train")
            if is_main:
                progress.show(step, mean["loss"], f"  epoch {meta['epoch'] + 1}/{cfg.epochs}")
        pending.clear()
        last_flush.update(step=step, time=now)

    def save(step):
        if meta["step"] == step:
            return  # already saved at this step (e.g. an epoch end that is also a preemption)
        meta["step"] = step
        checkpointer.save(step, state, dict(meta), train_iter)

    # 6. The loop: step, log, (epoch end: validate, schedule, keep the best), checkpoint.
    start = int(meta["step"])
    progress = reporting.Progress(cfg.total_steps, cfg.batch_size, start_step=start)
    last_eval = (None, None, None)
    last = cfg.total_steps  # the last step of this call: earlier when the time limit stops it
    stop_point(f"while starting, before any step: nothing was lost (the work directory holds "
               f"{'the checkpoint of step %d' % start if start else 'no step yet'})")
    with deferred_sigterm() as preemption, _closing(checkpointer, writer):
        for step in range(start + 1, cfg.total_steps + 1):
            batch = global_batch(next(train_iter), split)
            state, metrics = train_step(state, batch, jnp.float32(meta["lr_scale"]))
            pending.append((step, metrics))
            if on_step is not None:
                on_step(step)
            if step % cfg.log_every == 0 or step == start + 1:
                flush(step)
                if step == start + 1:
                    progress.reset_clock(step)  # the rates shown leave the compilation out
            if step % cfg.steps_per_epoch == 0:
                flush(step)
                meta["epoch"] = step // cfg.steps_per_epoch
                summary, sums = evaluate(state)
                last_eval = (step, summary, sums)
                if meta["best_val_loss"] is None or summary["val_loss"] < meta["best_val_loss"]:
                    meta.update(best_val_loss=summary["val_loss"], best_step=step, bad_epochs=0)
                else:
                    meta["bad_epochs"] += 1
                    if meta["bad_epochs"] >= cfg.plateau_patience:
                        meta.update(lr_scale=meta["lr_scale"] * cfg.plateau_factor, bad_epochs=0)
                writer.write(step, dict(summary, epoch=meta["epoch"], lr=cfg.learning_rate * meta["lr_scale"]),
                             kind="val")
                if is_main:
                    print(f"epoch {meta['epoch']}: " + "  ".join(
                        f"{k} {v:.4f}" for k, v in summary.items() if k in task_headline(summary)), flush=True)
                save(step)
                last_flush["time"] = time.perf_counter()  # the next samples/s leaves validation out
            elif step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
                flush(step)
                save(step)
            time_up = cfg.max_seconds is not None and time.monotonic() - started >= cfg.max_seconds
            preempted, time_up = _on_any_process(preemption.requested, time_up)
            if preempted:
                flush(step)
                save(step)
                log.warning("stopped at step %d after SIGTERM; rerun the same command to resume", step)
                return {"preempted": True, "step": step}
            if time_up:
                last = step
                if is_main:
                    print(f"time limit of {cfg.max_seconds:g} s reached at step {step}: validating and "
                          "stopping (rerun the same command to continue)", flush=True)
                break
        flush(last)
        save(last)

    # 7. The final report, from the last state.
    stop_point(f"during the final validation and report; the checkpoint of step {last} is saved, "
               f"and the same command writes the report")
    summary, sums = last_eval[1:] if last_eval[0] == last else evaluate(state)
    if is_main:
        task.final_report(workdir, summary, sums)
        final = dict(summary, step=last, best_step=meta["best_step"], best_val_loss=meta["best_val_loss"],
                     time_limited=last < cfg.total_steps)
        (workdir / "final_metrics.json").write_text(json.dumps(final, indent=1))
    return summary


class _closing:
    """Waits for in-flight checkpoint writes and closes the writers, also on errors."""

    def __init__(self, checkpointer, writer):
        self.checkpointer, self.writer = checkpointer, writer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.checkpointer.close()
        finally:
            self.writer.close()


def task_headline(summary: dict) -> list:
    """The few validation numbers worth a line on the terminal."""
    keys = ["val_loss"] + [k for k in summary if k.endswith("top1") or k.startswith("f1") or "auc" in k]
    return keys[:6]
