"""The package: `pip install .` into a fresh virtual environment, then the library and a command
used from another directory (the installed copy, not this checkout).

The new environment reaches the already installed dependencies through a .pth file naming this
interpreter's site-packages, and the project installs with --no-deps. Its wheel is built with the
setuptools installed here when that one can build wheels (setuptools 70.1 or later, or the wheel
package beside it), without the package index; otherwise pip fetches setuptools from the index
into an isolated build environment, and the test is skipped when the index cannot be reached."""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest

from mantra_jax.infer.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "mantranet_small"

USE = f"""
import json, sys
import numpy as np
import mantra_jax
from mantra_jax.infer.predict import Predictor
rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
prob = Predictor.from_checkpoint({str(CHECKPOINT)!r}).predict(rgb)
print(json.dumps({{"file": mantra_jax.__file__, "prob": prob.tolist()}}))
"""


# What pip prints when it cannot fetch the build backend from the index.
OFFLINE = ("No matching distribution found for setuptools", "NewConnectionError", "Temporary failure in name resolution",
           "Network is unreachable")


def _builds_wheels_here() -> bool:
    try:
        version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return version >= (70, 1) or (version >= (64, 0) and importlib.util.find_spec("wheel") is not None)


def _run(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_pip_install_then_use_from_another_directory(tmp_path):
    env_dir, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv.create(env_dir, with_pip=False, symlinks=os.name != "nt")
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     elsewhere, None).stdout.strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_dependencies.pth").write_text("".join(p + "\n" for p in sorted(here)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    offline_build = ["--no-build-isolation", "--no-index"] if _builds_wheels_here() else []
    installed = _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *offline_build, str(ROOT)],
                     elsewhere, env, check=False)
    if installed.returncode and not offline_build and any(m in installed.stderr for m in OFFLINE):
        pytest.skip("building the package needs setuptools from the package index, which cannot be reached")
    assert installed.returncode == 0, installed.stderr[-3000:]

    # The library, imported from the installed copy, predicts what this checkout predicts.
    out = json.loads(_run([str(python), "-c", USE], elsewhere, env).stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(site.resolve()), out["file"]
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(out["prob"], np.float32), Predictor.from_checkpoint(CHECKPOINT).predict(rgb),
                               rtol=0, atol=1e-6)

    # A command, as `python -m` and as its console script, finds its shipped flagfile from here.
    bin_dir = python.parent
    for command in ([str(python), "-m", "experiments.imc385"], [str(bin_dir / "mantra-imc385")]):
        # The flags are parsed (the flagfile read: a missing one is an `error:` line, exit 2), then
        # the command's help is shown, exit 0.
        shown = _run(command + ["--flagfile=experiments/flags/imc385_smoke.flags", "--helpshort"], elsewhere, env,
                     check=False)
        output = shown.stdout + shown.stderr
        assert shown.returncode == 0 and "--helpfull lists every flag" in output, output[-2000:]
        assert "error:" not in output and "FATAL" not in output, output[-2000:]
        missing = _run(command + ["--flagfile=experiments/flags/no_such.flags", "--helpshort"], elsewhere, env,
                       check=False)
        assert missing.returncode == 2 and "error:" in missing.stderr, missing.stderr[-2000:]
    assert not (elsewhere / "runs").exists()  # --helpshort only parsed the flags
