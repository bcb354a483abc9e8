"""The one module that owns Orbax.

Layout of a checkpoint directory (a trainer's work directory, or a converted release):

    model_config.json          the ModelConfig of the network (mantra_jax.nn.config.to_dict)
    flags.txt                  the trainer's flags (a training run, a shipped model; not converted weights)
    checkpoints/<step>/        Orbax steps, each a Composite of
        params, batch_stats    the model (all evaluation ever restores)
        opt_state              optimiser state          (training only)
        data                   grain iterator state, one JSON file per process
        meta                   JSON: step, epoch, learning-rate scale, best step, seed, ...

A shipped model (checkpoints/*/, `package_model`) is a model-only checkpoint of one step, saved as
the step it was taken at, with the training run's best validation loss in its metadata and its
flags.txt, so that every command names that step and evaluate_imc / sensitivity default to the
settings it was trained with; plus a model card (README.md) and expected_outputs.json.

Retention: the last `keep` steps plus the best one (by validation loss). A step whose files are
truncated or unreadable is skipped with a warning and the previous one is used. A step whose saved
arrays do not have the shapes the model configuration asks for is not unreadable: it belongs to
another configuration, and restoring stops with a ConfigurationMismatch naming the arrays (read
from the step's metadata, before Orbax reads any array), leaving every step as it is.
"""
from __future__ import annotations

import json
import re
import logging

from pathlib import Path
from typing import Optional

import jax
import jax.experimental.multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mantra_jax.errors import UserError
from mantra_jax.nn import config as config_lib
from mantra_jax.nn import model as model_lib

CONFIG_FILE = "model_config.json"
STEPS_DIR = "checkpoints"
MODEL_ITEMS = ("params", "batch_stats")
STATE_ITEMS = ("params", "batch_stats", "opt_state")

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory that cannot be used (missing, empty, unreadable)."""


class ConfigurationMismatch(CheckpointError, model_lib.VariablesMismatch):
    """Saved weights of other shapes than the model configuration asks for."""


def check_directory_name(directory) -> None:
    """Refuses a checkpoint folder whose absolute path holds a backslash: TensorStore (under Orbax)
    reads it as a separator and would write the arrays elsewhere, so that no later run could read
    them back."""
    text = str(Path(directory).absolute())
    if "\\" in text:
        raise CheckpointError(f"{directory}: a checkpoint folder's path cannot hold a backslash (the "
                              f"array store reads it as a folder separator); use another folder name")


def write_model_config(directory, cfg: config_lib.ModelConfig):
    path = Path(directory) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        path.write_text(json.dumps(config_lib.to_dict(cfg), indent=1))


def read_model_config(directory) -> config_lib.ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a mantra_jax checkpoint (no {CONFIG_FILE})")
    try:
        return config_lib.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: unusable model configuration: {e}") from None


class Checkpointer:
    """Saves and restores training runs: model, optimiser, data iterator and metadata together."""

    def __init__(self, directory, *, keep: int = 3, async_save: bool = True):
        check_directory_name(directory)
        self.directory = Path(directory).absolute()
        self.keep = max(1, int(keep))
        self._manager = ocp.CheckpointManager(
            self.directory / STEPS_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None,  # retention is ours: last `keep` plus the best
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    # -- saving ---------------------------------------------------------------------------
    def save(self, step: int, state: dict, meta: dict, data_iterator=None, *, force: bool = True):
        items = {k: ocp.args.StandardSave(state[k]) for k in STATE_ITEMS if _nonempty(state[k])}
        items["meta"] = ocp.args.JsonSave(meta)
        if data_iterator is not None:
            import grain  # only trainers need grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        self._prune(best_step=meta.get("best_step"))

    def _prune(self, best_step: Optional[int]):
        steps = sorted(self._manager.all_steps())
        keep = set(steps[-self.keep :])
        if best_step is not None:
            keep.add(int(best_step))
        for s in steps:
            if s not in keep:
                self._manager.delete(s)

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()

    # -- restoring ------------------------------------------------------------------------
    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def restore_latest(self, abstract_state: dict, data_iterator=None):
        """(state, meta) of the newest readable step, or None when there is none.

        A step that fails to restore (truncated, partly written) is skipped with a warning and
        renamed `<step>.unreadable`. A step of another configuration raises ConfigurationMismatch.
        """
        for step in reversed(self.steps()):
            try:
                lines = _mismatches(self.directory, step, abstract_state, STATE_ITEMS)
            except Exception:  # noqa: BLE001 - metadata unreadable: the restore below says why
                lines = []
            if lines:
                raise ConfigurationMismatch(
                    f"{self.directory}: checkpoint step {step} holds arrays of other shapes than this "
                    f"run's model and optimiser (another configuration; nothing was renamed or "
                    f"deleted):\n" + "\n".join(lines)
                    + "\nUse another --workdir, or start over in this one with --overwrite.")
            try:
                return self._restore(step, abstract_state, data_iterator)
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                log.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one",
                            step, self.directory, _short(e))
                self._set_aside(step)
        return None

    def _set_aside(self, step: int):
        """Renames an unreadable step out of the way (kept for inspection, never overwritten)."""
        if jax.process_count() > 1:  # every process has failed on this step before any renames it
            jax.experimental.multihost_utils.sync_global_devices(f"set_aside_{step}")
        if jax.process_index() == 0:
            src = self.directory / STEPS_DIR / str(step)
            dst = src.with_name(f"{step}.unreadable")
            n = 1
            while dst.exists():
                dst, n = src.with_name(f"{step}.unreadable{n}"), n + 1
            src.rename(dst)
            log.warning("moved the unreadable step to %s", dst)
        self._manager.reload()

    def _restore(self, step, abstract_state, data_iterator):
        items = {k: ocp.args.StandardRestore(abstract_state[k]) for k in STATE_ITEMS if _nonempty(abstract_state[k])}
        items["meta"] = ocp.args.JsonRestore()
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = {k: restored[k] if k in items else abstract_state[k] for k in STATE_ITEMS}
        return state, dict(restored["meta"])


def _nonempty(tree) -> bool:
    """Orbax refuses empty trees (e.g. the batch statistics of the IMC network, which has none)."""
    return bool(jax.tree_util.tree_leaves(tree))


def saved_steps(directory) -> list[int]:
    """The step numbers under `directory`/checkpoints, from the folder names (no Orbax)."""
    steps_dir = Path(directory) / STEPS_DIR
    return sorted(int(p.name) for p in steps_dir.iterdir() if p.name.isdigit()) if steps_dir.is_dir() else []


def _shapes(tree) -> dict:
    return {jax.tree_util.keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(tree)}


def _mismatches(directory: Path, step: int, abstract: dict, items) -> list[str]:
    """Lines naming the saved arrays of `step` whose shapes differ from `abstract`'s (empty when
    they fit), from the step's metadata alone. The optimiser state is compared as a whole, by its
    paths (Orbax stores named tuples as dicts: `.mu` becomes `['mu']`) and shapes."""
    lines = []
    for item in items:
        folder = directory / STEPS_DIR / str(step) / item
        expected = _shapes(abstract[item])
        saved = _shapes(ocp.StandardCheckpointHandler().metadata(epath.Path(folder))) if folder.is_dir() else {}
        if item == "opt_state":
            expected = {re.sub(r"\.(\w+)", r"['\1']", k): v for k, v in expected.items()}
            if expected != saved:
                lines.append(f"  opt_state: {len(saved)} saved arrays laid out otherwise than the {len(expected)} "
                             f"of this run's optimiser (another optimiser setting such as --grad_clip_norm or "
                             f"--init, or a checkpoint written before gradient clipping joined the optimiser chain)")
            continue
        for k in sorted(set(expected) | set(saved)):
            if expected.get(k) != saved.get(k):
                lines.append(f"  {item}{k}: {expected.get(k, 'absent')} in the configuration, "
                             f"{saved.get(k, 'absent')} saved")
    return lines if len(lines) <= 12 else lines[:12] + [f"  ... and {len(lines) - 12} more arrays"]


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 300 else text[:300] + "..."


def save_model(directory, cfg: config_lib.ModelConfig, variables: dict, meta: Optional[dict] = None, *,
               step: int = 0):
    """Writes a model-only checkpoint (converted weights, a shipped model) that `load_model` reads,
    as `step` (a trained model: the step it was taken at; converted weights: 0). A `meta` with
    "best_val_loss" makes it the best step by validation loss (mantra_jax.provenance)."""
    check_directory_name(directory)
    write_model_config(directory, cfg)
    manager = ocp.CheckpointManager(Path(directory).absolute() / STEPS_DIR,
                                    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    items = {k: ocp.args.StandardSave(variables[k]) for k in MODEL_ITEMS if _nonempty(variables[k])}
    items["meta"] = ocp.args.JsonSave(dict(meta or {}, step=int(step), best_step=int(step)))
    manager.save(int(step), args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()
    manager.close()


def load_model(directory, *, step: Optional[int] = None, which: str = "best"):
    """(ModelConfig, variables) from any checkpoint directory, restoring the model alone.

    `which` is "best" (the best validation step recorded by the trainer, else the latest) or
    "latest". Steps that cannot be read are skipped with a warning.
    """
    directory = Path(directory).absolute()
    cfg = read_model_config(directory)
    steps_dir = directory / STEPS_DIR
    if not steps_dir.is_dir():
        raise CheckpointError(f"{directory}: no {STEPS_DIR}/ folder with saved steps")
    manager = ocp.CheckpointManager(steps_dir, options=ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False))
    steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(f"{steps_dir}: no saved step")
    abstract = jax.eval_shape(lambda: model_lib.init(jax.random.key(0), cfg))
    candidates = [step] if step is not None else list(reversed(steps))
    errors = []
    for s in candidates:
        try:
            meta = manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            target = s
            if step is None and which == "best" and meta.get("best_step") in steps:
                target = int(meta["best_step"])
            lines = _mismatches(directory, target, abstract, MODEL_ITEMS)
            if lines:
                raise ConfigurationMismatch(
                    f"{directory}: the model configuration ({CONFIG_FILE}) and the weights saved in "
                    f"step {target} disagree ({CONFIG_FILE} edited, or copied from another run?):\n"
                    + "\n".join(lines))
            items = {k: ocp.args.StandardRestore(abstract[k]) for k in MODEL_ITEMS if _nonempty(abstract[k])}
            restored = manager.restore(target, args=ocp.args.Composite(**items))
            # An empty item (the IMC network's batch statistics) was not saved: it is `{}` as abstract.
            variables = {k: restored[k] if k in items else abstract[k] for k in MODEL_ITEMS}
            model_lib.check_variables(variables, cfg, what=f"checkpoint {directory} step {target}")
            manager.close()
            for error in errors:  # said only when an older step served: else the error says it
                log.warning("checkpoint %s: skipped the unreadable %s", directory, error)
            return cfg, jax.tree.map(np.asarray, variables)
        except model_lib.VariablesMismatch:
            manager.close()
            raise  # a readable checkpoint of another configuration: no older step will fit either
        except Exception as e:  # noqa: BLE001 - any other failure means this step is unusable
            errors.append(f"step {s}: {_short(e)}")
    manager.close()
    raise CheckpointError(f"{directory}: no readable checkpoint step:\n  " + "\n  ".join(errors))


def load_model_at(directory, step=None):
    """(ModelConfig, variables, provenance) of one step choice: "best" (the trainer's best step by
    validation loss; the latest one when it recorded none), "latest" or a step number; None: the
    default choice (mantra_jax.provenance.DEFAULT_STEP, best).

    `provenance` is the report entry of mantra_jax.provenance.checkpoint_record: the folder, the
    step, why that step, the model configuration and the command line.
    """
    from mantra_jax import provenance

    choice = provenance.parse_step(provenance.DEFAULT_STEP if step is None else step)
    directory = Path(directory).absolute()
    read_model_config(directory)  # a folder that is no checkpoint fails here, with its name
    steps_dir = directory / STEPS_DIR
    if not steps_dir.is_dir():
        raise CheckpointError(f"{directory}: no {STEPS_DIR}/ folder with saved steps")
    manager = ocp.CheckpointManager(steps_dir, options=ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False))
    try:
        steps = sorted(manager.all_steps())
        newest, meta, errors = None, {}, []
        for s in reversed(steps):  # the newest step whose metadata reads
            try:
                meta = dict(manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
                newest = s
                break
            except Exception as e:  # noqa: BLE001 - an unreadable step: try the previous one
                errors.append(f"step {s}: {_short(e)}")
    finally:
        manager.close()
    if newest is None:
        raise CheckpointError(f"{steps_dir}: no saved step" if not steps else
                              f"{directory}: no readable checkpoint step:\n  " + "\n  ".join(errors))
    best = meta.get("best_step")
    if isinstance(choice, int):
        if choice not in steps:
            raise CheckpointError(f"{directory}: no step {choice}; the saved steps are {steps}")
        target, reason = choice, provenance.ASKED_FOR
    elif choice == "best" and meta.get("best_val_loss") is not None and best in steps:
        target, reason = int(best), provenance.BEST_BY_VALIDATION
    elif choice == "best" and meta.get("best_val_loss") is not None:
        target, reason = newest, f"latest: the best step {best} is not saved"
    else:
        target = newest
        reason = provenance.LATEST if choice == "latest" else provenance.LATEST_NO_VALIDATION
    cfg, variables = load_model(directory, step=target)
    record = provenance.checkpoint_record(directory, step=target, choice=choice, reason=reason, meta=meta,
                                          model_config=config_lib.to_dict(cfg))
    return cfg, variables, record


SHIPPED_FILES = (CONFIG_FILE, "flags.txt", "README.md", "expected_outputs.json")


def package_model(source, destination, extra_meta: Optional[dict] = None) -> dict:
    """Copies the best step of the training run `source` into `destination` as a shipped model:
    parameters and batch statistics only, saved as that step with the run's best validation loss
    (so `load_model_at` names it "best by validation loss"), and the run's flags.txt. Returns the
    provenance record of the step taken. The card (README.md) and expected_outputs.json are the
    caller's."""
    import shutil

    from mantra_jax import provenance

    cfg, variables, record = load_model_at(source, "best")
    if record["step_reason"] != provenance.BEST_BY_VALIDATION:
        raise CheckpointError(f"{source}: no best step by validation loss to ship ({record['step_reason']})")
    flags_file = Path(source) / provenance.RUN_FLAGS_FILE
    if not flags_file.is_file():
        raise CheckpointError(f"{source}: no {provenance.RUN_FLAGS_FILE}: a shipped model carries its training flags")
    destination = Path(destination)
    if (destination / STEPS_DIR).exists():  # the earlier package; its card (README.md) stays
        shutil.rmtree(destination / STEPS_DIR)
    for name in SHIPPED_FILES[:-2] + SHIPPED_FILES[-1:]:
        (destination / name).unlink(missing_ok=True)
    meta = dict(extra_meta or {}, best_val_loss=record["best_val_loss"], source_run=Path(source).name)
    save_model(destination, cfg, variables, meta, step=record["step"])
    shutil.copyfile(flags_file, destination / provenance.RUN_FLAGS_FILE)
    return record
