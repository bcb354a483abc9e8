"""The shared trainer on the IMC task: resume, sharding, non-finite losses, checkpoints, reports."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mantra_jax import checkpoint
from mantra_jax import errors
from mantra_jax import workdir
from mantra_jax.data import photos
from mantra_jax.errors import UserError
from mantra_jax.imc import taxonomy
from mantra_jax.nn import config
from mantra_jax.nn import model as model_lib
from mantra_jax.train import imc, loop
from tests.helpers import hold_lock, write_photo_folder

LEVEL = 1
MODEL = config.make_config(width_scale=0.0625, backbone="baseline", head="imc", num_classes=taxonomy.num_classes(LEVEL))


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = write_photo_folder(tmp_path_factory.mktemp("photos"), {"train": 2, "val": 1})
    return photos.build_patch_index(root, use_cache=False)


def make_task(index, **kw):
    return imc.make_task(MODEL, level=LEVEL, patch_index=index, learning_rate=1e-3, val_samples=8,
                         val_batch_size=4, crop=16, **kw)


def loop_cfg(workdir, **kw):
    base = dict(workdir=str(workdir), seed=3, batch_size=4, epochs=2, steps_per_epoch=2, checkpoint_every=1,
                keep=2, log_every=1, async_checkpoint=False, num_devices=1)
    base.update(kw)
    return loop.LoopConfig(**base)


def train_losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def final_params(workdir):
    return checkpoint.load_model(workdir, which="latest")[1]["params"]


def test_resume_after_sigterm_is_bit_exact(index, tmp_path):
    loop.train(make_task(index), loop_cfg(tmp_path / "straight"))

    def kill_at_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    out = loop.train(make_task(index), loop_cfg(tmp_path / "resumed"), on_step=kill_at_2)
    assert out == {"preempted": True, "step": 2}
    assert not (tmp_path / "resumed" / "final_metrics.json").exists()
    loop.train(make_task(index), loop_cfg(tmp_path / "resumed"))
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "resumed")
    # The report of the finished run.
    report = json.loads((tmp_path / "resumed" / "imc_report.json").read_text())
    assert set(report["levels"]) == {"0", "1"}
    for key in ("classes", "top1", "top3", "top5", "top10"):
        assert key in report["levels"]["1"]
    assert report["levels"]["1"]["classes"] == 27
    assert (tmp_path / "resumed" / "confusion_L1.png").stat().st_size > 1000
    final = json.loads((tmp_path / "resumed" / "final_metrics.json").read_text())
    assert final["step"] == 4 and np.isfinite(final["val_loss"])


def test_time_limit_validates_reports_and_resumes(index, tmp_path):
    work = tmp_path / "limited"
    # A limit already spent after the first step: the run stops there, validates and reports.
    summary = loop.train(make_task(index), loop_cfg(work, max_seconds=1e-6))
    final = json.loads((work / "final_metrics.json").read_text())
    assert final["step"] == 1 and final["time_limited"] is True
    assert final["val_loss"] == pytest.approx(summary["val_loss"])
    assert json.loads((work / "imc_report.json").read_text())["levels"]["1"]["classes"] == 27
    assert checkpoint.Checkpointer(work).steps()[-1] == 1
    # The same command without the limit continues from step 1 to the end.
    loop.train(make_task(index), loop_cfg(work))
    rows = [json.loads(line) for line in open(work / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    final = json.loads((work / "final_metrics.json").read_text())
    assert final["step"] == 4 and final["time_limited"] is False
    # Every train row after a call's first carries the samples/s since the previous row.
    rates = {r["step"]: r.get("samples_per_s") for r in rows if r["kind"] == "train"}
    assert rates[1] is None and rates[2] is None  # each call's first row holds compilation
    assert rates[3] > 0 and rates[4] > 0
    with pytest.raises(ValueError, match="max_seconds"):
        loop_cfg(work, max_seconds=0)


def test_two_devices_give_the_same_losses_as_one(index, tmp_path):
    assert jax.device_count() >= 2
    loop.train(make_task(index), loop_cfg(tmp_path / "one", epochs=1))
    loop.train(make_task(index), loop_cfg(tmp_path / "two", epochs=1, num_devices=2))
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert one.keys() == two.keys()
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, step
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5),
                 final_params(tmp_path / "one"), final_params(tmp_path / "two"))


def test_non_finite_loss_names_the_step_and_keeps_last_checkpoint(index, tmp_path):
    task = make_task(index)
    base_loss, base_data = task.loss, task.train_dataset

    class Poisoned(grain.DatasetIterator):
        """Adds a "poison" column that is NaN in the third batch."""

        def __init__(self, parent):
            super().__init__(parent)
            self.n = 0

        def __next__(self):
            self.n += 1
            batch = dict(next(self._parent))
            batch["poison"] = np.full((len(batch["label"]),), np.nan if self.n == 3 else 0.0, np.float32)
            return batch

        def get_state(self):
            return {"parent": self._parent.get_state(), "n": self.n}

        def set_state(self, state):
            self._parent.set_state(state["parent"])
            self.n = state["n"]

    def poisoned_data(*args):
        return Poisoned(iter(base_data(*args)))

    task.train_dataset = poisoned_data
    task.loss = lambda p, s, b, d: (lambda l, aux: (l + jnp.mean(b["poison"]), aux))(*base_loss(p, s, b, d))
    with pytest.raises(loop.NonFiniteLoss, match="step 3"):
        loop.train(task, loop_cfg(tmp_path / "nan", async_checkpoint=True))
    assert checkpoint.Checkpointer(tmp_path / "nan").steps()[-1] == 2


def test_truncated_newest_checkpoint_falls_back_with_a_warning(index, finished, tmp_path, caplog):
    work = copy_of(finished, tmp_path)
    steps = checkpoint.Checkpointer(work).steps()
    assert steps == [1, 2]
    for f in (work / "checkpoints" / "2" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        cfg, variables = checkpoint.load_model(work, which="latest")
    assert "unreadable" in caplog.text
    assert cfg == MODEL
    # A restarted run resumes from step 1 and finishes.
    summary = loop.train(make_task(index), loop_cfg(work, epochs=1))
    assert np.isfinite(summary["val_loss"])


def test_cli_rejects_bad_flags_before_writing(tmp_path):
    work = tmp_path / "never"
    for bad in (["--level=9"], ["--no_such_flag=1"], ["--precision=float16"]):
        proc = subprocess.run([sys.executable, "-m", "experiments.imc385", f"--workdir={work}", *bad],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not work.exists()


# -- a work directory belongs to one run (issue 14) ------------------------------------------------
@pytest.fixture(scope="module")
def finished(index, tmp_path_factory):
    """A finished one-epoch run (2 steps); tests work on copies (`copy_of`)."""
    work = tmp_path_factory.mktemp("finished") / "run"
    loop.train(make_task(index), loop_cfg(work, epochs=1))
    return work


def copy_of(finished, tmp_path):
    import shutil

    return Path(shutil.copytree(finished, tmp_path / "run"))


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_with_other_settings_is_refused_before_anything_is_written(index, finished, tmp_path):
    work = copy_of(finished, tmp_path)
    before = snapshot(work)
    wider = config.make_config(width_scale=0.125, backbone="baseline", head="imc",
                               num_classes=taxonomy.num_classes(LEVEL))
    other = imc.make_task(wider, level=LEVEL, patch_index=index, learning_rate=1e-3, val_samples=8,
                          val_batch_size=4, crop=16)
    with pytest.raises(workdir.OtherRun, match=r"model\.widths: .* recorded, .* now") as refused:
        loop.train(other, loop_cfg(work, epochs=1))
    assert "--workdir" in str(refused.value) and "--overwrite" in str(refused.value)
    with pytest.raises(workdir.OtherRun, match=r"seed: 3 recorded, 4 now"):
        loop.train(make_task(index), loop_cfg(work, epochs=1, seed=4))
    with pytest.raises(workdir.OtherRun, match=r"crop: 16 recorded, 32 now"):
        loop.train(imc.make_task(MODEL, level=LEVEL, patch_index=index, learning_rate=1e-3, val_samples=8,
                                 val_batch_size=4, crop=32), loop_cfg(work, epochs=1))
    assert snapshot(work) == before
    # A work directory from before run.json: its model_config.json still decides.
    (work / "run.json").unlink()
    before = snapshot(work)
    with pytest.raises(workdir.OtherRun, match=r"model\.widths"):
        loop.train(other, loop_cfg(work, epochs=1))
    assert snapshot(work) == before and not list((work / "checkpoints").glob("*.unreadable*"))


def test_a_run_is_extended_or_started_over_explicitly(index, finished, tmp_path, capsys):
    work = copy_of(finished, tmp_path)
    # More epochs and other bookkeeping: the same run, resumed at step 2.
    loop.train(make_task(index), loop_cfg(work, epochs=2, log_every=2, keep=3, checkpoint_every=2))
    assert json.loads((work / "final_metrics.json").read_text())["step"] == 4
    assert sorted(train_losses(work)) == [1, 2, 3, 4]
    before = snapshot(work)
    with pytest.raises(UserError, match="at step 4, past the 2 steps"):  # fewer epochs than done
        loop.train(make_task(index), loop_cfg(work, epochs=1))
    assert snapshot(work) == before
    # --overwrite: another configuration starts from scratch, saying what it deleted.
    wider = config.make_config(width_scale=0.125, backbone="baseline", head="imc",
                               num_classes=taxonomy.num_classes(LEVEL))
    other = imc.make_task(wider, level=LEVEL, patch_index=index, learning_rate=1e-3, val_samples=8,
                          val_batch_size=4, crop=16)
    (work / "notes.txt").write_text("mine")
    loop.train(other, loop_cfg(work, epochs=1, overwrite=True))
    err = capsys.readouterr().err
    assert "--overwrite: deleted the earlier run" in err and "checkpoints/" in err and "metrics.jsonl" in err
    assert checkpoint.read_model_config(work) == wider
    assert checkpoint.Checkpointer(work).steps() == [1, 2]
    assert sorted(train_losses(work)) == [1, 2]
    assert (work / "notes.txt").read_text() == "mine"


def test_a_locked_work_directory_is_refused_naming_the_holder(index, tmp_path):
    work = tmp_path / "run"
    with hold_lock(work) as pid:
        with pytest.raises(workdir.Locked, match=f"pid {pid} on "):
            loop.train(make_task(index), loop_cfg(work, epochs=1))
        assert sorted(p.name for p in work.iterdir()) == [".lock"]


def test_a_checkpoint_of_another_configuration_is_named_never_renamed(index, finished, tmp_path, capfd):
    work = copy_of(finished, tmp_path)
    wider = config.make_config(width_scale=0.125, backbone="baseline", head="imc",
                               num_classes=taxonomy.num_classes(LEVEL))
    # model_config.json that does not match the saved weights: say so, and which arrays.
    checkpoint.write_model_config(work, wider)
    capfd.readouterr()
    with pytest.raises(checkpoint.ConfigurationMismatch,
                       match=r"model_config.json\) and the weights saved in step 2 disagree") as e:
        checkpoint.load_model(work)
    shape = lambda cfg: jax.eval_shape(lambda: model_lib.init(jax.random.key(0), cfg))["params"]["Featex"]["b2c1"]["kernel"].shape
    assert (f"params['Featex']['b2c1']['kernel']: {shape(wider)} in the configuration, {shape(MODEL)} saved"
            in str(e.value))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "unreadable" not in err
    # The trainer, on a work directory without any run record: refused, no step renamed.
    (work / "run.json").unlink()
    (work / "model_config.json").unlink()
    other = imc.make_task(wider, level=LEVEL, patch_index=index, learning_rate=1e-3, val_samples=8,
                          val_batch_size=4, crop=16)
    with pytest.raises(checkpoint.ConfigurationMismatch, match="checkpoint step 2 holds arrays of other shapes"):
        loop.train(other, loop_cfg(work, epochs=1))
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["1", "2"]
    assert not (work / "run.json").exists()


def test_an_optimiser_state_laid_out_otherwise_is_named_never_renamed(index, finished, tmp_path):
    # A run without a run record (as older ones were) resumed with another optimiser chain (here
    # without the clipping stage; likewise a run saved before clipping joined the chain): the
    # arrays have the same shapes but other paths. Refused with the reason, every step kept.
    work = copy_of(finished, tmp_path)
    (work / "run.json").unlink()
    with pytest.raises(checkpoint.ConfigurationMismatch, match="laid out otherwise than the"):
        loop.train(make_task(index), loop_cfg(work, epochs=1, grad_clip_norm=0.0))
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["1", "2"]


def test_overwrite_deletes_only_a_recorded_run(index, tmp_path):
    # A folder that holds no run record (a clone's root, a shipped model): --overwrite deletes
    # nothing of it and refuses, naming what it found.
    work = tmp_path / "clone"
    (work / "checkpoints" / "shipped_model").mkdir(parents=True)
    (work / "checkpoints" / "shipped_model" / "weights").write_text("keep me")
    (work / "model_config.json").write_text("{}")
    before = snapshot(work)
    with pytest.raises(UserError, match=r"holds no run record \(run.json\) but model_config.json, checkpoints/"):
        loop.train(make_task(index), loop_cfg(work, epochs=1, overwrite=True))
    assert snapshot(work) == before and not (work / workdir.LOCK_FILE).exists()


def _stopping(task, where):
    """The task, with a SIGTERM sent to this process at `where` ("start": while the model is
    initialised, after the lock and run.json; "report": while the final report is written)."""
    def kill():
        os.kill(os.getpid(), signal.SIGTERM)

    if where == "start":
        return dataclasses.replace(task, init_variables=lambda rng: (kill(), task.init_variables(rng))[1])
    return dataclasses.replace(task, final_report=lambda *a: (kill(), task.final_report(*a)))


def test_sigterm_at_start_up_or_during_the_report_stops_losing_nothing(index, tmp_path):
    work = tmp_path / "run"
    with pytest.raises(errors.Stopped, match="before any step: nothing was lost"):
        loop.train(_stopping(make_task(index), "start"), loop_cfg(work, epochs=1))
    assert not (work / workdir.LOCK_FILE).exists() and not checkpoint.saved_steps(work)
    # During the final validation and report: the last step is saved; the same command then
    # writes the report without a further step.
    with pytest.raises(errors.Stopped, match="checkpoint of step 2 is saved"):
        loop.train(_stopping(make_task(index), "report"), loop_cfg(work, epochs=1))
    assert not (work / workdir.LOCK_FILE).exists() and not (work / "final_metrics.json").exists()
    assert checkpoint.saved_steps(work)[-1] == 2
    loop.train(make_task(index), loop_cfg(work, epochs=1))
    assert json.loads((work / "final_metrics.json").read_text())["step"] == 2
    assert sorted(train_losses(work)) == [1, 2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # train's handler is gone with it


def test_settings_that_are_not_numbers_are_refused(tmp_path):
    for bad in (dict(plateau_factor=float("nan")), dict(learning_rate=float("nan")), dict(learning_rate=0.0),
                dict(grad_clip_norm=float("nan")), dict(max_seconds=float("nan"))):
        with pytest.raises(errors.BadSetting, match=next(iter(bad))):
            loop_cfg(tmp_path, **bad)
    with pytest.raises(UserError, match="backslash"):
        loop_cfg(tmp_path / "a\\b")


TINY_CLI = ["--level=0", "--backbone=baseline", "--width_scale=0.0625", "--crop=16", "--batch_size=4",
            "--val_samples=8", "--val_batch_size=4", "--epochs=1", "--log_every=1"]


def run_imc385(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.imc385", *TINY_CLI, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_user_errors_are_one_message_without_a_trace_and_write_nothing(index, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    small = write_photo_folder(tmp_path / "small", {"train": 2, "val": 1}, height=100, width=100)
    work = tmp_path / "never"
    for args, message in [((f"--data_dir={empty}",), "no image file found"),
                          ((f"--data_dir={small}",), "smaller than 256 px"),
                          ((f"--data_dir={tmp_path / 'missing'}",), "does not exist"),
                          ((f"--data_dir={index.root}", "--batch_size=5"), "divisible by the 2 devices")]:
        proc = run_imc385(f"--workdir={work}", "--steps_per_epoch=2", *args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr
        assert not work.exists()


def test_cli_refuses_the_issue_rerun_and_exits_75_after_sigterm(index, finished, tmp_path):
    # The issue's command: a rerun with another width over a finished run.
    work = copy_of(finished, tmp_path)
    before = snapshot(work)
    proc = run_imc385(f"--workdir={work}", f"--data_dir={index.root}", "--steps_per_epoch=2", "--width_scale=0.25")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.widths" in proc.stderr and "--overwrite" in proc.stderr
    assert snapshot(work) == before
    # SIGTERM: a checkpoint, then exit status 75 (unfinished: rerun to resume), not 0.
    work = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.imc385", *TINY_CLI, f"--workdir={work}",
                             f"--data_dir={index.root}", "--steps_per_epoch=10000", "--checkpoint_every=10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the progress line of step 1: the loop runs
        if line.startswith("step 1/"):
            proc.send_signal(signal.SIGTERM)
            break
    err, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "rerun the same command to resume" in err
    assert checkpoint.Checkpointer(work).steps() and not (work / "final_metrics.json").exists()


def test_training_optimizer_clips_the_global_norm_before_the_task_optimizer(index):
    task = dataclasses.replace(make_task(index), optimizer=optax.sgd(1.0))  # its update: minus the gradient
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(3, 4)).astype(np.float32) * 100, "b": {"c": rng.normal(size=5).astype(np.float32)}}
    params = jax.tree.map(np.zeros_like, grads)
    flat = np.concatenate([grads["a"].ravel(), grads["b"]["c"]])

    def passed_on(max_norm):  # the gradient the clipping hands to the task's optimiser
        optimizer = loop.training_optimizer(task, max_norm)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return -np.concatenate([np.asarray(updates["a"]).ravel(), np.asarray(updates["b"]["c"])])

    np.testing.assert_allclose(np.linalg.norm(passed_on(1.0)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(passed_on(1.0), flat / np.linalg.norm(flat), rtol=1e-5)
    np.testing.assert_allclose(passed_on(1e6), flat, rtol=1e-6)  # below the bound: untouched
    assert loop.training_optimizer(task, 0.0) is task.optimizer  # 0: off


def test_train_step_logs_the_norm_before_clipping_and_scales_the_clipped_update(index):
    task = dataclasses.replace(make_task(index), optimizer=optax.sgd(1.0))
    variables = task.init_variables(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8),
             "label": rng.integers(0, MODEL.num_classes, 2).astype(np.int32)}
    grads = jax.grad(lambda p: task.loss(p, variables["batch_stats"], batch, jnp.float32)[0])(variables["params"])
    norm = float(optax.tree.norm(grads))
    step = jax.jit(loop.make_train_step(task, norm / 10, jnp.float32))
    state, metrics = step(loop.initial_state(task, variables, norm / 10), batch, jnp.float32(0.5))
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)
    moved = np.asarray(state["params"]["imc"]["bias"]) - np.asarray(variables["params"]["imc"]["bias"])
    np.testing.assert_allclose(moved, -0.5 * np.asarray(grads["imc"]["bias"]) / 10, rtol=1e-4, atol=1e-7)


def test_the_eta_leaves_the_compilation_out_and_the_run_ends_with_a_table(capsys):
    import io
    import time as time_lib

    from experiments import common
    from mantra_jax.metrics import progress as reporting

    stream = io.StringIO()
    bar = reporting.Progress(300, 16, stream=stream)
    time_lib.sleep(0.05)  # the first step: compilation
    first = bar.line(1, 1.9)
    assert "steps/s" not in first and "ETA 2" not in first and "compilation included" in first
    bar.reset_clock(1)
    time_lib.sleep(0.01)
    assert "ETA 0:0" in bar.line(2, 1.8)  # minutes at most, not hours from the compilation
    common.finish({"val_loss": 1.23456, "L0_top1": 0.5, "step": 300})
    out = capsys.readouterr().out
    assert "final validation (step 300)" in out and "| val_loss | 1.2346 |" in out and "{" not in out
