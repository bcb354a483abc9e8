"""The training loop shared by IMC pretraining and end-to-end ManTra-Net training.

A task (mantra_jax/train/imc.py, mantra_jax/train/mantranet.py) says what is learnt: the model,
the loss, the data, the validation metrics and the final report. This module says how: one
`jax.jit` step over a ("data",) mesh of every device (parameters replicated, batch split,
gradients averaged by the compiler, state donated), the constraint projection after each update,
validation and a reduce-on-plateau schedule each epoch, Orbax checkpoints that resume exactly,
an optional wall-time limit (`max_seconds`), and what a person sees (progress line,
metrics.jsonl, TensorBoard).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mantra_jax.nn import model as model_lib
from mantra_jax.train import checkpoint as ckpt_lib
from mantra_jax.train import reporting

log = logging.getLogger(__name__)
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
    # Wall seconds from the start of `train` (initialisation, validation set and compilation
    # included) after which no new step starts: the run saves a checkpoint, validates and writes
    # its report as at the end; the same command resumes it. None: no limit.
    max_seconds: Optional[float] = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "epochs", "steps_per_epoch", "checkpoint_every", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 (or None: no limit), got {self.max_seconds}")

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


class NonFiniteLoss(FloatingPointError):
    pass


class _Preemption:
    """SIGTERM sets a flag; the loop saves and exits cleanly at the next step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)



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


def train(task: Task, cfg: LoopConfig, *, on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Runs (or resumes) training in `cfg.workdir`; returns the final validation summary."""
    started = time.monotonic()
    workdir = Path(cfg.workdir).absolute()
    is_main = jax.process_index() == 0
    dtype = PRECISIONS[cfg.precision]

    # 1. Devices: one ("data",) mesh; parameters replicated, batches split.
    mesh = make_mesh(cfg.num_devices)
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if cfg.batch_size % n_dev or cfg.batch_size % n_proc:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {n_dev} devices "
                         f"and {n_proc} processes")
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    # 2. Model and optimiser state, initialised from the seed.
    variables = task.init_variables(jax.random.key(cfg.seed))
    state = {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": task.optimizer.init(variables["params"]),
    }
    state = jax.device_put(state, replicated)
    abstract_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)

    # 3. Data: this process's shard of the training stream; the fixed validation set.
    train_iter = iter(task.train_dataset(cfg.seed, jax.process_index(), n_proc, cfg.batch_size // n_proc))
    val_batches = task.val_batches()

    # 4. Resume from the newest readable checkpoint of this work directory, if any.
    ckpt_lib.write_model_config(workdir, task.model_cfg)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=cfg.keep, async_save=cfg.async_checkpoint)
    meta = {"step": 0, "epoch": 0, "lr_scale": 1.0, "best_val_loss": None, "best_step": None,
            "bad_epochs": 0, "seed": cfg.seed, "task": task.name}
    restored = checkpointer.restore_latest(abstract_state, train_iter)
    if restored is not None:
        state, meta = restored
        if meta.get("seed") != cfg.seed:
            raise ValueError(f"{workdir} holds a run with seed {meta.get('seed')}, not {cfg.seed}")
        log.info("resuming from step %d of %s", meta["step"], workdir)
        if is_main:
            reporting.truncate_after(workdir / "metrics.jsonl", meta["step"])
    writer = reporting.MetricsWriter(workdir, enabled=is_main)

    # 5. The compiled steps.
    def train_step(state, batch, lr_scale):
        def loss_fn(params):
            return task.loss(params, state["batch_stats"], batch, dtype)

        (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = task.optimizer.update(grads, state["opt_state"], state["params"])
        updates = jax.tree.map(lambda u: u * lr_scale, updates)  # Adam is scale-free: this scales the lr
        params = model_lib.project(optax.apply_updates(state["params"], updates), task.model_cfg)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, metrics

    train_step = jax.jit(train_step, in_shardings=(replicated, split, None),
                         out_shardings=(replicated, replicated), donate_argnums=0)
    eval_step = jax.jit(lambda variables, batch: task.eval_sums(variables, batch, dtype),
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
    with _Preemption() as preemption, _closing(checkpointer, writer):
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
