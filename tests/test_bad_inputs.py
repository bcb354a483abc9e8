"""Bad input across the commands, as one table: each row is a command, its arguments, the exit
status expected and the words its one stderr message must hold; no row may print a traceback or
any line besides that message (no library log lines, no help dump).

The rows of one command run in one process (tests/command_rows.py: the command's main through
experiments.common.run, as `python -m` runs it), so the table costs one interpreter start per
command. A command added to experiments/ gets its rows here.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import write_photo_folder

ROOT = Path(__file__).resolve().parents[1]
MANTRANET = str(ROOT / "checkpoints" / "mantranet_small")
IMC = str(ROOT / "checkpoints" / "imc_small")
TRAIN_FAST = ["--backbone=baseline", "--width_scale=0.0625", "--batch_size=2", "--val_batch_size=2",
              "--steps_per_epoch=1", "--epochs=1"]

# command -> [(arguments, exit status, words of the stderr message)]; {name} is a file of `setup`.
TABLE = {
    "experiments.predict": [
        (["--max_pixels=-5", f"--checkpoint={MANTRANET}", "--out={tmp}/p1", "{image}"], 2, "--max_pixels"),
        ([f"--checkpoint={MANTRANET}", "--out={text}/sub", "{image}"], 2, "is a file"),
        (["--checkpoint={bad_config}", "--out={tmp}/p2", "{image}"], 2, "widths must be positive"),
        ([f"--checkpoint={IMC}", "--out={tmp}/p3", "{image}"], 2, "--trace_checkpoint"),
        (["--no_such_flag=1"], 2, "no_such_flag"),
        (["--tile=0", "--out={tmp}/p4", "{image}"], 2, "--tile"),
        ([f"--checkpoint={MANTRANET}", "--out={tmp}/p5"], 2, "IMAGE_OR_FOLDER"),
    ],
    "experiments.evaluate": [
        (["--bins=100", "--from_stats={stats_ok}", "--out={tmp}/e1"], 2, "power of two"),
        (["--from_stats={stats_bad_report}", "--out={tmp}/e2"], 2, "report.json"),
        (["--from_stats={stats_mismatched}", "--out={tmp}/e3"], 2, "do not agree"),
        (["--from_stats={stats_text}", "--out={tmp}/e4"], 2, "not an .npz archive"),
        (["--from_stats={stats_ok}", "--out={text}"], 2, "is a file"),
        (["--from_stats={stats_no_name_column}", "--out={tmp}/e5"], 0, ""),
    ],
    "experiments.evaluate_imc": [
        ([f"--checkpoint={IMC}", "--out={text}"], 2, "is a file"),
        (["--checkpoint={tmp}/nowhere", "--out={tmp}/i1"], 2, "not a mantra_jax checkpoint"),
        ([f"--checkpoint={MANTRANET}", "--out={tmp}/i2"], 2, "not an IMC model"),
    ],
    "experiments.export": [
        ([f"--checkpoint={MANTRANET}", "--out={text}", "--formats=stablehlo"], 2, "is a file"),
        ([f"--checkpoint={IMC}", "--out={tmp}/x1", "--formats=stablehlo"], 2, "head"),
        (["--checkpoint={bad_config}", "--out={tmp}/x2", "--formats=stablehlo"], 2, "widths must be positive"),
        ([f"--checkpoint={MANTRANET}", "--out={tmp}/x3", "--formats=gif"], 2, "--formats"),
        (["--out={tmp}/x4"], 2, "--checkpoint"),
    ],
    "experiments.kcmi": [
        ([f"--checkpoint={IMC}", "--data_dir={tmp}/no_cameras", "--out={tmp}/k1"], 2, "no_cameras"),
        ([f"--checkpoint={IMC}", "--data_dir={tmp}", "--out={text}"], 2, "is a file"),
    ],
    "experiments.sensitivity": [
        (["--checkpoint={tmp}/nowhere", "--out={tmp}/s1"], 2, "not a mantra_jax checkpoint"),
        ([f"--checkpoint={MANTRANET}", "--out={tmp}/s2", "--nosensitivity", "--norobustness"], 2, "nothing to do"),
    ],
    "experiments.convert": [
        (["--h5={tmp}/missing.h5", "--out={tmp}/c1"], 2, "missing.h5"),
    ],
    "experiments.imc385": [
        (["--level=9"], 2, "--level"),
        (["--workdir={tmp}/w1", "unexpected"], 2, "unexpected"),
    ],
    "experiments.mantranet": [
        (["--learning_rate=nan", "--workdir={tmp}/m1"], 2, "--learning_rate=nan"),
        (["--learning_rate=0", "--workdir={tmp}/m1"], 2, "--learning_rate must be > 0"),
        (["--grad_clip_norm=nan", "--workdir={tmp}/m1"], 2, "--grad_clip_norm"),
        (["--width_scale=nan", "--workdir={tmp}/m1"], 2, "--width_scale"),
        (["--max_seconds=nan", "--workdir={tmp}/m1"], 2, "--max_seconds"),
        (["--plateau_factor=nan", "--workdir={tmp}/m1"], 2, "--plateau_factor"),
        (["--workdir={tmp}/back\\slash"], 2, "backslash"),
        (["--init=authors", f"--imc_checkpoint={IMC}", "--workdir={tmp}/m2"], 2, "IMC model"),
        (["--init=half_random", "--imc_checkpoint={bad_config}", "--workdir={tmp}/m3"], 2, "widths must be positive"),
        (["--data_dir={few_photos}", "--workdir={tmp}/m4", *TRAIN_FAST], 2, "val split"),
        (["--data_dir={links}", "--workdir={tmp}/m5", *TRAIN_FAST], 2, "no image file found"),
    ],
}

LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl's log lines


def _png(path, size=32, seed=0):
    ok, data = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))
    path.write_bytes(data.tobytes())
    return path


def _stats_folder(folder, *, n=1, names_len=None, report="{}", per_image=None):
    folder.mkdir()
    arrays = {"names": np.array([f"im{i}" for i in range(names_len or n)]),
              "hist_forged": np.ones((n, 4), np.int64), "hist_pristine": np.ones((n, 4), np.int64),
              "score_mean": np.full(n, 0.5), "score_max": np.full(n, 0.9),
              "height": np.full(n, 8), "width": np.full(n, 8)}
    np.savez(folder / "stats.npz", **arrays)
    (folder / "report.json").write_text(report)
    if per_image is not None:
        (folder / "per_image.csv").write_text(per_image)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    text = tmp / "notes.txt"
    text.write_text("not an image, not a checkpoint\n")
    bad_config = tmp / "bad_config"
    bad_config.mkdir()
    shutil.copy(Path(MANTRANET) / "model_config.json", bad_config / "model_config.json")
    config = json.loads((bad_config / "model_config.json").read_text())
    (bad_config / "model_config.json").write_text(json.dumps(dict(config, widths=[[-8]], lstm_kernel=0)))
    stats_text = tmp / "stats_text"
    stats_text.mkdir()
    (stats_text / "stats.npz").write_text("hello\n")
    links = tmp / "links"
    links.mkdir()
    os.symlink("nowhere.png", links / "dangling.png")
    os.symlink("loop.png", links / "loop.png")
    return {
        "tmp": tmp, "text": text, "image": _png(tmp / "photo.png"), "bad_config": bad_config,
        "stats_ok": _stats_folder(tmp / "stats_ok"),
        "stats_bad_report": _stats_folder(tmp / "stats_bad_report", report="{not json"),
        "stats_mismatched": _stats_folder(tmp / "stats_mismatched", names_len=3),
        "stats_no_name_column": _stats_folder(tmp / "stats_no_name_column", per_image="file,auc\nx,0.5\n"),
        "stats_text": stats_text,
        "few_photos": write_photo_folder(tmp / "few_photos", {"train": 2}),
        "links": links,
    }


def _run_rows(command, rows, files, env):
    argvs = [[arg.format(**files) for arg in args] for args, _, _ in rows]
    done = subprocess.run([sys.executable, "-m", "tests.command_rows", command], input=json.dumps(argvs),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return argvs, [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("command", sorted(TABLE))
def test_bad_input_is_one_error_line_with_its_exit_status(command, files, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    rows = TABLE[command]
    argvs, results = _run_rows(command, rows, files, env)
    assert len(results) == len(rows)
    for argv, (_, status, words), result in zip(argvs, rows, results):
        where = f"{command} {' '.join(argv)}:\n{result['stderr']}"
        assert result["status"] == status, where
        assert "Traceback" not in result["stderr"], where
        assert not any(LOG_LINE.match(line) for line in result["stderr"].splitlines()), where
        if status == 2:
            assert result["stderr"].startswith("error: ") and words in result["stderr"], where
            assert result["stderr"].count("error: ") == 1 and "--helpfull" not in result["stderr"], where


def test_help_lists_the_commands_own_and_shared_flags_not_the_libraries(files, tmp_path):
    _, (predict,) = _run_rows("experiments.predict", [(["--help"], 0, "")], files, dict(os.environ))
    _, (trainer,) = _run_rows("experiments.mantranet", [(["--help"], 0, "")], files, dict(os.environ))
    assert predict["status"] == 0 and trainer["status"] == 0
    for text, own, shared in ((predict["stdout"], "--trace_level", "--step"),
                              (trainer["stdout"], "--anomaly", "--workdir")):
        assert "flags of this command:" in text and "shared flags" in text
        assert own in text.split("shared flags")[0] and shared in text.split("shared flags")[1]
        assert "--jax_" not in text and "--grain_" not in text and "--helpfull" in text
