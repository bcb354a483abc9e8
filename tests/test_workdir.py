"""Folders that belong to one run (mantra_jax/workdir.py): the lock, the run record, and the
output folders of predict and evaluate held by the same lock."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
import time

import pytest
from absl import app

from experiments import common
from mantra_jax import workdir
from mantra_jax.errors import UserError
from tests.helpers import hold_lock


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "out"
    with hold_lock(folder) as pid:
        with pytest.raises(workdir.Locked) as refused:
            with workdir.lock(folder):
                pass
        text = str(refused.value)
        assert f"pid {pid} on {socket.gethostname()}" in text and "another run" in text
    # The holder was killed (kill -9): its lock is stale on this host and is taken over.
    with workdir.lock(folder) as path:
        assert json.loads(path.read_text())["pid"] != pid
    assert not (folder / ".lock").exists()


def test_lock_of_another_host_or_unreadable_is_refused_with_the_way_out(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}))
    with pytest.raises(workdir.Locked, match=r"pid 1 on elsewhere.*delete .*\.lock"):
        with workdir.lock(tmp_path):
            pass
    (tmp_path / ".lock").write_text("")
    with pytest.raises(workdir.Locked, match="cannot be read"):
        with workdir.lock(tmp_path):
            pass


def test_lock_of_a_dead_process_is_stale_and_the_folder_it_made_goes_with_it(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with caplog.at_level("WARNING"):
        with workdir.lock(tmp_path):
            pass
    assert "stale lock" in caplog.text
    assert tmp_path.is_dir()  # it existed before
    made = tmp_path / "new" / "out"
    with workdir.lock(made):
        assert made.is_dir()
    assert not made.exists()  # nothing was written in it
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        with workdir.lock(tmp_path / "file"):
            pass


def test_run_record_names_each_difference(tmp_path):
    settings = {"task": "imc_L0", "model": {"widths": [[2], [4, 4]], "srm": True}, "seed": 0, "crop": 64}
    workdir.check_run(tmp_path, settings)  # nothing recorded yet
    workdir.write_run(tmp_path, settings)
    workdir.check_run(tmp_path, json.loads(json.dumps(settings)))
    other = {"task": "imc_L0", "model": {"widths": [[4], [8, 8]], "srm": True}, "seed": 1, "crop": None}
    with pytest.raises(workdir.OtherRun) as refused:
        workdir.check_run(tmp_path, other)
    lines = str(refused.value).splitlines()
    assert "  crop: 64 recorded, null now" in lines
    assert "  model.widths: [[2], [4, 4]] recorded, [[4], [8, 8]] now" in lines
    assert "  seed: 0 recorded, 1 now" in lines
    assert not any("srm" in line or "task" in line for line in lines)
    # A setting the record does not know (added to the code since) is not a difference.
    workdir.check_run(tmp_path, dict(settings, added_since=1))


def _run(main, capsys, *, trainer=False):
    """experiments.common.run on `main` in this process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as stop:
        common.run(main, trainer=trainer, argv=["command"])
    return stop.value.code, capsys.readouterr().err


def test_every_command_ends_the_same_way_on_user_errors_usage_errors_and_sigterm(capsys, tmp_path):
    def user(argv):
        raise UserError("bad --data_dir")

    assert _run(user, capsys) == (2, "error: bad --data_dir\n")

    def usage(argv):
        raise app.UsageError("give at least one IMAGE")

    status, err = _run(usage, capsys)
    assert status == 2 and err == "error: give at least one IMAGE (--help lists the flags)\n"  # no help dump

    def bug(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):  # a bug keeps its traceback
        common.run(bug, argv=["command"])

    def stopped_while_holding_a_lock(argv):
        with workdir.lock(tmp_path / "held"):
            (tmp_path / "held" / "partial").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        raise AssertionError("not reached")

    for trainer, status in ((True, 75), (False, 143)):
        before = signal.getsignal(signal.SIGTERM)
        code, err = _run(stopped_while_holding_a_lock, capsys, trainer=trainer)
        assert code == status and err.startswith("stopped by SIGTERM") and "Traceback" not in err
        assert ("rerun the same command" in err) == trainer
        assert not (tmp_path / "held" / workdir.LOCK_FILE).exists()  # the lock was released
        assert signal.getsignal(signal.SIGTERM) == before  # the handler lives as long as the command


def test_an_output_folder_below_a_file_or_unwritable_is_refused_before_anything_is_made(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for folder, words in ((a_file, "is a file, not a folder"), (a_file / "sub" / "deeper", "is a file, so no folder")):
        with pytest.raises(UserError, match=words):
            workdir.check_output_folder(folder)
        with pytest.raises(UserError, match=words):
            with workdir.lock(folder):
                pass
    assert workdir.check_output_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert not (tmp_path / "new").exists()


def test_predict_and_evaluate_refuse_an_output_folder_in_use(tmp_path):
    out = tmp_path / "out"
    with hold_lock(out) as pid:
        shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "mantranet_small"
        for command in (["-m", "experiments.predict", "--checkpoint", str(shipped), "--out", str(out),
                         str(tmp_path)],
                        ["-m", "experiments.evaluate", f"--from_stats={tmp_path}", f"--out={out}"]):
            proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2, proc.stderr
            assert f"in use by another" in proc.stderr and f"pid {pid}" in proc.stderr
            assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]


# -- output folders: one rule for every command that writes an --out folder ---------------------
def _run_into(folder, files, *, overwrite=False, fail=False):
    with workdir.output_folder(folder, "test run", overwrite=overwrite):
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        if fail:
            raise UserError("refused")


def test_an_output_folder_is_never_left_half_old_half_new(tmp_path, capsys):
    out = tmp_path / "out"
    _run_into(out, {"summary.csv": "first", "a_mask.png": "a", "thumbs/a.jpg": "t"})
    assert json.loads((out / workdir.OUTPUTS_FILE).read_text())["files"] == ["a_mask.png", "summary.csv",
                                                                             "thumbs/a.jpg"]
    # A second run is refused, naming what is there, and changes nothing.
    with pytest.raises(workdir.FolderNotEmpty, match=r"outputs of an earlier run.*3 file\(s\).*--overwrite"):
        _run_into(out, {"summary.csv": "second"})
    assert (out / "summary.csv").read_text() == "first" and (out / "a_mask.png").exists()
    # --overwrite replaces the earlier run whole: its files go (it says so), a user's file stays.
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    _run_into(out, {"summary.csv": "second", "b_mask.png": "b"}, overwrite=True)
    err = capsys.readouterr().err
    assert "deleted the earlier run" in err and "kept 1 file(s)" in err and "my_notes.txt" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        workdir.OUTPUTS_FILE, "b_mask.png", "my_notes.txt", "summary.csv"]
    assert (out / "summary.csv").read_text() == "second"
    record = json.loads((out / workdir.OUTPUTS_FILE).read_text())
    assert record["files"] == ["b_mask.png", "summary.csv"] and record["kept"] == ["my_notes.txt"]


def test_an_output_folder_of_other_files_or_an_interrupted_run(tmp_path):
    photos = tmp_path / "photos"  # e.g. an input folder given as --out
    photos.mkdir()
    (photos / "a.png").write_text("photo")
    with pytest.raises(workdir.FolderNotEmpty, match=r"is not empty: 1 file\(s\), a.png"):
        _run_into(photos, {"index.html": "page"})
    assert sorted(p.name for p in photos.iterdir()) == ["a.png"]
    # A run killed mid-way leaves its start record: the next run tells its files from the others.
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    (out / workdir.OUTPUTS_FILE).write_text(json.dumps({"command": "predict", "kept": ["mine.txt"]}))
    (out / "half.png").write_text("half")
    with pytest.raises(workdir.FolderNotEmpty, match=r"earlier run \(predict\): 1 file\(s\), half.png"):
        _run_into(out, {})
    _run_into(out, {"whole.png": "w"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [workdir.OUTPUTS_FILE, "mine.txt", "whole.png"]


def test_a_refused_run_leaves_no_output_folder(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(UserError, match="refused"):
        _run_into(out, {}, fail=True)
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        _run_into(tmp_path / "file", {})


def test_every_output_command_refuses_a_folder_with_files(tmp_path):
    """The rule at the command line: one error line, exit 2, the folder untouched (and a refused run
    never creates its --out)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("earlier")
    shipped = Path(__file__).resolve().parents[1] / "checkpoints"
    for module, extra in (("evaluate", [f"--from_stats={tmp_path}"]),
                          ("evaluate_imc", [f"--checkpoint={shipped / 'imc_small'}"]),
                          ("kcmi", [f"--checkpoint={shipped / 'imc_small'}", f"--data_dir={tmp_path}"]),
                          ("sensitivity", [f"--checkpoint={shipped / 'mantranet_small'}"]),
                          ("export", [f"--checkpoint={shipped / 'mantranet_small'}"])):
        proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", *extra, f"--out={out}"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (module, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --out {out} is not empty"), (module, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    missing = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "experiments.predict", f"--checkpoint={tmp_path}",
                           f"--out={missing}", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot use the checkpoint" in proc.stderr and not missing.exists()
