"""Folders that belong to one run (mantra_jax/workdir.py): the lock, the run record, and the
output folders of predict and evaluate held by the same lock."""
import json
import socket
import subprocess
import sys

import pytest

from mantra_jax import workdir
from mantra_jax.errors import UserError, exit_on_user_error
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


def test_exit_on_user_error_is_one_line_and_status_2_but_bugs_keep_their_trace(capsys):
    @exit_on_user_error
    def main(what):
        raise (UserError("bad --data_dir") if what == "user" else KeyError("bug"))

    with pytest.raises(SystemExit) as stop:
        main("user")
    assert stop.value.code == 2 and capsys.readouterr().err == "error: bad --data_dir\n"
    with pytest.raises(KeyError):
        main("bug")


def test_predict_and_evaluate_refuse_an_output_folder_in_use(tmp_path):
    out = tmp_path / "out"
    with hold_lock(out) as pid:
        for command in (["-m", "experiments.predict", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out),
                         str(tmp_path)],
                        ["-m", "experiments.evaluate", f"--from_stats={tmp_path}", f"--out={out}"]):
            proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2, proc.stderr
            assert f"in use by another" in proc.stderr and f"pid {pid}" in proc.stderr
            assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
