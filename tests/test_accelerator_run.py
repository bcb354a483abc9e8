"""benchmarks/accelerator_run.py: the budget plan, the parts' order and statuses, the saved report,
stopping a process at its part's end, and the output folder the device tool can bring back."""
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks import accelerator_run as run

SMALL_MINIMUMS = {"wheels": (5.0, 5.0), "accelerator": (20.0, 20.0), "loaders": (20.0, 20.0),
                  "train": (50.0, 50.0), "environment": (5.0, 5.0)}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(run, "_clock", fake)
    monkeypatch.setattr(run, "MINIMUM_S", SMALL_MINIMUMS)
    return fake


def test_each_part_ends_before_the_least_time_of_the_later_parts(monkeypatch):
    monkeypatch.setattr(run, "MINIMUM_S", SMALL_MINIMUMS)
    plan = run.deadlines(run.PARTS, end=190.0, quick=False)
    assert plan == {"environment": 190.0, "train": 185.0, "loaders": 135.0, "accelerator": 115.0, "wheels": 95.0}
    assert run.deadlines(["wheels", "train"], end=100.0, quick=True) == {"train": 100.0, "wheels": 50.0}


def test_parts_keep_the_budget_skip_what_no_longer_fits_and_save_after_each(clock, monkeypatch, tmp_path):
    seen = {}
    out = tmp_path / "out"

    def wheels(ctx, deadline):
        clock.now += 2
        ctx.available = {"grain": True, "pywt": True}
        return {"wheels": []}

    def accelerator(ctx, deadline):
        seen["saved_before_accelerator"] = json.loads((out / "run.json").read_text())["parts"]
        seen["accelerator_deadline"] = deadline - 1000.0
        clock.now = deadline  # uses all of its share
        return {"rows": {}}

    def loaders(ctx, deadline):
        clock.now += 30  # overruns its share, then fails with what it measured
        raise run.PartFailed("no loader rate for forgery", {"streams": {"imc": {"samples_per_s": 99.0}}})

    def train(ctx, deadline):  # must not run: too little time is left
        raise AssertionError("train ran")

    def environment(ctx, deadline):
        clock.now += 1
        return {"nvidia_smi": "ok"}

    for name, fn in (("wheels", wheels), ("accelerator", accelerator), ("loaders", loaders), ("train", train),
                     ("environment", environment)):
        monkeypatch.setitem(run.PART_FUNCTIONS, name, fn)
    assert run.main(["--out", str(out), "--budget_s", "200", "--scratch", str(tmp_path / "scratch")]) == 0

    report = json.loads((out / "run.json").read_text())
    assert list(report["parts"]) == list(run.PARTS)
    status = {name: part["status"] for name, part in report["parts"].items()}
    assert status == {"wheels": "ok", "accelerator": "ok", "loaders": "failed", "train": "skipped",
                      "environment": "ok"}
    assert "no loader rate for forgery" in report["parts"]["loaders"]["error"]
    assert report["parts"]["loaders"]["streams"]["imc"]["samples_per_s"] == 99.0  # kept
    assert "50 s needed" in report["parts"]["train"]["reason"]
    # The accelerator's share ends where the later parts' least times begin: 190 - 20 - 50 - 5.
    assert seen["accelerator_deadline"] == 115.0
    assert seen["saved_before_accelerator"]["wheels"]["status"] == "ok"
    assert report["elapsed_s"] <= 200 - run.END_MARGIN_S
    assert "train skipped" in (out / "run.log").read_text()


def test_parts_that_need_a_missing_module_are_skipped(clock, monkeypatch, tmp_path):
    ran = []

    def wheels(ctx, deadline):
        ctx.available = {"grain": True, "pywt": False}
        return {}

    def part(name):
        def fn(ctx, deadline):
            ran.append(name)
            return {}
        return fn

    monkeypatch.setitem(run.PART_FUNCTIONS, "wheels", wheels)
    for name in ("loaders", "train"):
        monkeypatch.setitem(run.PART_FUNCTIONS, name, part(name))
    run.main(["--out", str(tmp_path / "out"), "--budget_s", "500", "--parts", "train,wheels,loaders",
              "--scratch", str(tmp_path / "scratch")])
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert ran == ["loaders"]
    assert list(report["parts"]) == ["wheels", "loaders", "train"]  # the run's order, not the flag's
    assert report["parts"]["train"] == dict(report["parts"]["train"], status="skipped",
                                            reason="pywt not importable (no wheels?)")


def test_a_process_still_running_at_its_end_gets_sigterm_then_sigkill(tmp_path):
    ctx = run.Context(out=tmp_path, scratch=tmp_path, quick=True, wheels=tmp_path, photos=None)
    ctx.log = open(tmp_path / "run.log", "w")
    # SIGTERM reaches the process alone (its workers live on while it saves); what it leaves
    # behind is killed with its group.
    polite = textwrap.dedent("""
        import signal, subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        def stop(*args):
            print("saving; worker alive:", worker.poll() is None, "pid", worker.pid, flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, stop)
        print("started", flush=True)
        time.sleep(60)
    """)
    result = run.run_logged(ctx, "polite", [sys.executable, "-c", polite], deadline=ctx.clock() + 5, grace=3)
    assert result["stopped"] and result["rc"] == 3
    ctx.log.flush()
    line = next(l for l in (tmp_path / "run.log").read_text().splitlines() if "saving" in l)
    assert "worker alive: True" in line
    worker = int(line.split("pid")[-1])
    for _ in range(50):  # reaped by the test process's init shortly after the kill
        if not pathlib.Path(f"/proc/{worker}").exists() or "Z" in pathlib.Path(f"/proc/{worker}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the worker outlived its group's SIGKILL")
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('started', flush=True); time.sleep(60)"
    result = run.run_logged(ctx, "stubborn", [sys.executable, "-c", stubborn], deadline=ctx.clock() + 3, grace=1.5)
    assert result["stopped"] and result["rc"] == -9
    ctx.log.close()
    log = (tmp_path / "run.log").read_text()
    assert "[polite] started" in log and "[stubborn] started" in log


def test_real_run_of_the_cheap_parts_fills_a_flat_folder_the_device_tool_returns(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_run", "--out", str(out), "--budget_s", "120",
                           "--quick", "--parts", "wheels,environment", "--wheels", str(tmp_path / "no_wheels")],
                          cwd=run.REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["environment.txt", "run.json", "run.log"]
    assert all(p.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in out.iterdir())
    report = json.loads((out / "run.json").read_text())
    assert report["parts"]["wheels"]["wheels"] == [] and report["parts"]["environment"]["status"] == "ok"
    assert report["parts"]["environment"]["versions"]["jax"][0].isdigit()
    assert "$ nvidia-smi" in (out / "environment.txt").read_text()
    # A folder holding anything else is refused before anything runs.
    (out / "stray.txt").write_text("x")
    done = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_run", "--out", str(out), "--budget_s", "60"],
                          cwd=run.REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "stray.txt" in done.stderr


def test_wheels_install_into_the_site_and_fall_back_to_the_carried_protobuf_only_when_needed(monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    (wheels / "fallback").mkdir(parents=True)
    for name in ("grain-0-py3-none-any.whl", "pywavelets-0-py3-none-any.whl", "fallback/protobuf-0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    installed = []

    def fake_run_logged(ctx, label, command, deadline, env=None):
        installed.append([pathlib.Path(c).name for c in command if str(c).endswith(".whl")])
        return {"rc": 0, "seconds": 0.0, "stopped": False}

    def fake_import_error(ctx, module):
        if module == "grain" and not any("protobuf-0-py3-none-any.whl" in names for names in installed):
            return "TypeError: Descriptors cannot be created directly (protobuf too old)"
        return None

    monkeypatch.setattr(run, "run_logged", fake_run_logged)
    monkeypatch.setattr(run, "_import_error", fake_import_error)
    ctx = run.Context(out=tmp_path, scratch=tmp_path / "scratch", quick=True, wheels=wheels, photos=None)
    out = run.part_wheels(ctx, deadline=ctx.clock() + 60)
    assert installed == [["grain-0-py3-none-any.whl", "pywavelets-0-py3-none-any.whl"],
                         ["protobuf-0-py3-none-any.whl"]]
    assert ctx.available == {"grain": True, "pywt": True} and out["import_errors"] == {}
    assert "protobuf too old" in out["fallback"]["because"]
    assert ctx.env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "scratch" / "site")

    # Another import error: no fallback, the part says why grain is missing.
    installed.clear()
    monkeypatch.setattr(run, "_import_error", lambda ctx, m: "ModuleNotFoundError: No module named 'portpicker'"
                        if m == "grain" else None)
    ctx = run.Context(out=tmp_path, scratch=tmp_path / "scratch2", quick=True, wheels=wheels, photos=None)
    out = run.part_wheels(ctx, deadline=ctx.clock() + 60)
    assert len(installed) == 1 and "fallback" not in out
    assert ctx.available == {"grain": False, "pywt": True} and "portpicker" in out["import_errors"]["grain"]


def test_summary_names_the_compilation_cost_of_each_new_image_size():
    sizes = [{"size": "480x640", "cold_s": 21.5, "steady_s": 0.0123, "tiled": False},
             {"size": "1080x1440", "cold_s": 9.25, "steady_s": 0.0456, "tiled": False}]
    report = {"parts": {"accelerator": {"status": "ok", "seconds": 100.0,
                                        "rows": {"infer/bfloat16": {"ms": 15.0},
                                                 "infer_sizes/bfloat16": {"ms": None, "sizes": sizes}}}}}
    (line,) = [l for l in run.summary_lines(report) if "compilation" in l]
    assert "infer_sizes/bfloat16" in line and "480x640 21.5 s / 12.3 ms" in line and "1080x1440 9.25 s / 45.6 ms" in line
