"""Every shipped flagfile parses with its entry point's flags (no unknown flag, no bad value)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGFILES = sorted((ROOT / "experiments" / "flags").glob("*.flags"))


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=lambda p: p.name)
def test_flagfile_parses(flagfile):
    modules = {"imc385": "experiments.imc385", "study_imc": "experiments.imc385", "study_e2e": "experiments.mantranet",
               "study.": "experiments.study"}
    module = next((m for prefix, m in modules.items() if flagfile.name.startswith(prefix)), "experiments.mantranet")
    proc = subprocess.run([sys.executable, "-m", module, f"--flagfile={flagfile}", "--helpshort"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "error:" not in output, output[-2000:]
    assert "flags of this command:" in proc.stdout  # the help was printed, i.e. every flag parsed


def test_flagfiles_exist_for_both_trainers():
    names = {p.name for p in FLAGFILES}
    assert {"imc385.flags", "imc385_smoke.flags", "mantranet.flags", "mantranet_smoke.flags"} <= names


def test_a_shipped_flagfile_is_found_from_any_directory(tmp_path, monkeypatch):
    from experiments import cli

    monkeypatch.chdir(tmp_path)
    shipped = str(cli.FLAGS_DIR / "imc385_smoke.flags")
    assert cli.resolve_flagfiles(["prog", "--flagfile=experiments/flags/imc385_smoke.flags", "--seed=1"]) == [
        "prog", f"--flagfile={shipped}", "--seed=1"]
    assert cli.resolve_flagfiles(["prog", "--flagfile", "imc385_smoke.flags", "-flagfile=mantranet.flags"]) == [
        "prog", "--flagfile", shipped, f"-flagfile={cli.FLAGS_DIR / 'mantranet.flags'}"]
    # A file that exists where the command runs is read as given, and an unknown one is left to absl's error.
    (tmp_path / "experiments" / "flags").mkdir(parents=True)
    (tmp_path / "experiments" / "flags" / "imc385_smoke.flags").write_text("--seed=3\n")
    for given in ("experiments/flags/imc385_smoke.flags", "experiments/flags/nonexistent.flags", "other/imc385.flags"):
        assert cli.resolve_flagfiles(["prog", f"--flagfile={given}"]) == ["prog", f"--flagfile={given}"]
