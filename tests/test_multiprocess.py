"""Two local CPU processes (gloo over loopback) train the IMC model and agree with one process
that consumes the same global batches."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_photo_folder

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir):
    rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture()
def photo_dir(tmp_path):
    return write_photo_folder(tmp_path / "photos", {"train": 2, "val": 1})


def test_two_processes_match_one_process_on_the_same_global_batches(photo_dir, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "tests.mp_trainer", str(photo_dir)]
    single = subprocess.run(cmd + [str(tmp_path / "single"), "emulate", "2"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    coord = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(cmd + [str(tmp_path / "multi"), "process", coord, "2", str(i)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    # Only process 0 wrote the logs and report; both took part in the checkpoint.
    assert (tmp_path / "multi" / "imc_report.json").exists()
    data_files = sorted(p.name for p in (tmp_path / "multi" / "checkpoints" / "3" / "data").glob("process_*"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
