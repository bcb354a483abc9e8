"""The shared trainer on the IMC task: resume, sharding, non-finite losses, checkpoints, reports."""
import json
import os
import signal
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mantra_jax.data import photos
from mantra_jax.imc import taxonomy
from mantra_jax.nn import config
from mantra_jax.train import checkpoint, imc, loop
from tests.helpers import write_photo_folder

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


def test_truncated_newest_checkpoint_falls_back_with_a_warning(index, tmp_path, caplog):
    work = tmp_path / "run"
    loop.train(make_task(index), loop_cfg(work, epochs=1))
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
        assert proc.returncode != 0
        assert "FATAL Flags parsing error" in proc.stderr or "Unknown command line flag" in proc.stderr
    assert not work.exists()
