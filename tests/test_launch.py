"""Tests for launch/: sweep expansion, local and SLURM runs, summaries, and the launchers.

Everything here runs the launch scripts as they are run on a cluster (subprocesses of the
standard-library scripts) with fake trainers, a fake `sbatch` and a fake `srun`.
"""
import ast
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from absl import flags as absl_flags

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SWEEPS = LAUNCH / "sweeps"


def _load_module(name, path):
    """Imports a launch/ script by path (launch/ is scripts, not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it is executed
        spec.loader.exec_module(module)
    return sys.modules[name]


sweep = _load_module("launch_sweep", LAUNCH / "sweep.py")


def run_script(args, *, cwd=REPO, env=None, timeout=60):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# ------------------------------------------------------------------------------------------------
# No JAX in launch/
# ------------------------------------------------------------------------------------------------
JAX_PACKAGES = {"jax", "jaxlib", "flax", "optax", "orbax", "mantra_jax", "grain"}


@pytest.mark.parametrize("path", sorted(LAUNCH.rglob("*.py")), ids=lambda p: p.name)
def test_launch_scripts_import_no_jax(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & JAX_PACKAGES, f"{path} imports {imported & JAX_PACKAGES}"


def test_sweep_dry_run_loads_no_jax_at_run_time(tmp_path):
    probe = textwrap.dedent("""
        import runpy, sys
        sys.argv = ["sweep.py", "--dry_run", sys.argv[1], "--root", sys.argv[2]]
        try:
            runpy.run_path("launch/sweep.py", run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        assert "jax" not in sys.modules, "jax was imported"
    """)
    result = run_script(["-c", probe, SWEEPS / "table4_hierarchy.toml", tmp_path / "r"])
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------
# Example specs
# ------------------------------------------------------------------------------------------------
EXAMPLES = {
    "table2_backbones.toml": ("experiments.imc385", "backbone", ["vgg", "resnet", "dncnn"]),
    "table3_first_layer.toml": ("experiments.imc385", "first_layer",
                                ["plain3", "plain5", "bayar", "srm", "combined"]),
    "table4_hierarchy.toml": ("experiments.imc385", "level", ["0", "1", "2", "3", "4", "5"]),
    "table5_width_depth.toml": ("experiments.imc385", "backbone",
                                ["baseline", "wider", "deeper", "wider_deeper"]),
    "table6_anomaly.toml": ("experiments.mantranet", "anomaly",
                            ["tac", "df", "zf", "fac1", "fac2", "fac3"]),
    "table7_init.toml": ("experiments.mantranet", "init", ["random", "half_freeze", "half_random"]),
}


def test_every_example_spec_is_tested():
    assert sorted(p.name for p in SWEEPS.glob("*.toml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_spec_dry_run(name, tmp_path):
    module, flag, values = EXAMPLES[name]
    root = tmp_path / "root"
    result = run_script([LAUNCH / "sweep.py", "--dry_run", SWEEPS / name, "--root", root])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(values)
    for line, value in zip(lines, values):
        trial, status, trial_flags = line.split("\t")
        assert status == "todo"
        assert f"--{flag}={value}" in trial_flags.split()
        assert value in trial
    assert f"python -m {module}" in result.stderr
    assert not root.exists(), "a dry run must write nothing"


def test_table7_half_random_fine_tunes_featex_and_needs_a_checkpoint(tmp_path):
    loaded = sweep.load_sweep(SWEEPS / "table7_init.toml", root=str(tmp_path))
    by_name = {t.name: t.flags for t in loaded.trials}
    assert by_name["half_random"] == {"init": "half_random", "featex_learning_rate": 5e-5}
    assert loaded.fixed_flags["imc_checkpoint"].startswith(sweep.PLACEHOLDER_PREFIX)
    with pytest.raises(sweep.SpecError, match="placeholder"):
        sweep.check_runnable(loaded)


@pytest.mark.parametrize("name", ["table6_anomaly.toml", "table7_init.toml"])
def test_placeholder_stops_local_runs_until_set(name, tmp_path):
    result = run_script([LAUNCH / "sweep.py", SWEEPS / name, "--local", "--root", tmp_path])
    assert result.returncode == 2
    assert "--set imc_checkpoint=" in result.stderr and str(SWEEPS / name) in result.stderr


# ------------------------------------------------------------------------------------------------
# Expansion: grids, cases, names
# ------------------------------------------------------------------------------------------------
def test_cases_and_grid_are_crossed_in_order(tmp_path):
    spec = write(tmp_path / "crossed.toml", """
        module = "fake_trainer"
        workdir = "runs/crossed"
        [grid]
        level = [1, 2]
        first_layer = ["srm", "bayar"]
        [[cases]]
        init = "random"
        [[cases]]
        init = "half_random"
        featex_learning_rate = 5e-5
    """)
    trials = sweep.load_sweep(spec).trials
    combos = [(t.flags["init"], t.flags["level"], t.flags["first_layer"]) for t in trials]
    assert combos == [(init, level, layer) for init in ("random", "half_random")
                      for level in (1, 2) for layer in ("srm", "bayar")]
    assert all(("featex_learning_rate" in t.flags) == (t.flags["init"] == "half_random")
               for t in trials)
    assert len({t.name for t in trials}) == len(trials)


@pytest.mark.parametrize("body, message", [
    ('module = "m"\nworkdir = "w"\ngrids = {}\n', "unknown keys"),
    ('module = "m"\nworkdir = "w"\n[flags]\nlevel = 1\n[grid]\nlevel = [1, 2]\n',
     "both [flags] and [grid]"),
    ('module = "m"\nworkdir = "w"\ntrial_name = "x"\n[grid]\nlevel = [1, 2]\n', "both named"),
    ('module = "m"\nworkdir = "w"\ntrial_name = "trials"\n[grid]\nlevel = [1]\n', "a folder the sweep"),
    ('module = "m"\nworkdir = "w"\n[grid]\nworkdir = ["a"]\n', "set by the sweep"),
    ('module = "m"\nworkdir = "w"\n[grid]\nlevel = []\n', "non-empty list"),
    ('workdir = "w"\n', "module"),
    ('module = "m"\nworkdir = "w"\n[grid\n', "not a valid spec"),
    ('name = "a\\nb"\nmodule = "m"\nworkdir = "w"\n', "one line"),
    ('module = "m"\nworkdir = "w"\ntrial_name = "{level.real.foo}"\n[grid]\nlevel = [1]\n', "cannot be filled"),
    ('module = "m"\nworkdir = "w"\ntrial_name = "{level[0]}"\n[grid]\nlevel = [1]\n', "cannot be filled"),
])
def test_bad_specs_are_rejected_naming_the_file(tmp_path, body, message):
    spec = tmp_path / "bad.toml"
    spec.write_text(body)
    with pytest.raises(sweep.SpecError, match=re.escape(message)) as error:
        sweep.load_sweep(spec)
    assert str(spec) in str(error.value)


def test_a_spec_that_is_a_folder_or_not_text_is_one_error(tmp_path):
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\nmodule = "m"\nworkdir = "w"\n')
    for spec, words in (("folder.toml", "a folder, not a sweep spec"), ("latin1.toml", "not UTF-8")):
        result = run_script([LAUNCH / "sweep.py", "--dry_run", tmp_path / spec])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------
# Flagfiles
# ------------------------------------------------------------------------------------------------
def test_trial_flagfile_parses_with_absl_and_overrides_the_base(tmp_path):
    base = write(tmp_path / "base.flags", """
        # paper defaults
        --epochs=100
        --learning_rate=0.0001
        --workdir=/nowhere
    """)
    spec = write(tmp_path / "s.toml", f"""
        module = "experiments.imc385"
        base_flagfile = "{base}"
        workdir = "{tmp_path / 'root'}"
        trial_name = "w{{windows[0]}}_frozen-{{frozen}}"
        [flags]
        epochs = 3
        frozen = true
        [grid]
        windows = [[7, 15, 31], [3]]
        learning_rate = [5e-5]
    """)
    loaded = sweep.load_sweep(spec, overrides=[sweep.parse_override("batch_size=8"),
                                               sweep.parse_override("data_dir=/d/x y")])
    sweep.write_trials(loaded)
    assert [t.name for t in loaded.trials] == ["w7_frozen-true", "w3_frozen-true"]
    flagfile = tmp_path / "root" / "trials" / "0.flags"
    lines = [l for l in flagfile.read_text().splitlines() if not l.startswith("#")]
    assert lines == [f"--flagfile={base}", "--epochs=3", "--frozen=true", "--batch_size=8",
                     "--data_dir=/d/x y", "--windows=7,15,31", "--learning_rate=5e-05",
                     f"--workdir={tmp_path / 'root' / 'w7_frozen-true'}"]

    values = absl_flags.FlagValues()
    absl_flags.DEFINE_integer("epochs", None, "", flag_values=values)
    absl_flags.DEFINE_integer("batch_size", None, "", flag_values=values)
    absl_flags.DEFINE_float("learning_rate", None, "", flag_values=values)
    absl_flags.DEFINE_bool("frozen", False, "", flag_values=values)
    absl_flags.DEFINE_string("workdir", None, "", flag_values=values)
    absl_flags.DEFINE_string("data_dir", None, "", flag_values=values)
    absl_flags.DEFINE_list("windows", None, "", flag_values=values)
    values(["prog", f"--flagfile={flagfile}"])
    assert values.epochs == 3 and values.batch_size == 8 and values.frozen is True
    assert values.learning_rate == 5e-5 and values.windows == ["7", "15", "31"]
    assert values.data_dir == "/d/x y"
    assert values.workdir == str(tmp_path / "root" / "w7_frozen-true")


def test_override_cannot_change_a_varying_flag(tmp_path):
    spec = write(tmp_path / "s.toml", 'module = "m"\nworkdir = "w"\n[grid]\nlevel = [1, 2]\n')
    with pytest.raises(sweep.SpecError, match="varies"):
        sweep.load_sweep(spec, overrides=[("level", 3)])


# ------------------------------------------------------------------------------------------------
# Local runs with a fake trainer, then summaries
# ------------------------------------------------------------------------------------------------
FAKE_TRAINER = """
    import json, os, sys

    def read(args, flags):
        for arg in args:
            arg = arg.strip()
            if arg.startswith("--flagfile="):
                read(open(arg.split("=", 1)[1]).read().splitlines(), flags)
            elif arg.startswith("--"):
                name, _, value = arg[2:].partition("=")
                flags[name] = value

    flags = {}
    read(sys.argv[1:], flags)
    workdir = flags["workdir"]
    os.makedirs(workdir, exist_ok=True)  # as the trainers do
    with open(os.path.join(os.path.dirname(workdir), "calls.log"), "a") as log:
        log.write(os.path.basename(workdir) + "\\n")
    if flags.get("fail") == "true":
        sys.exit(3)
    if flags.get("preempt") == "true":  # stopped by SIGTERM: the trainers' status 75
        sys.exit(75)
    if flags.get("preempt") == "runner":  # the sweep runner is stopped while this trial runs
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(60)
        sys.exit(4)  # the runner did not pass the signal on
    loss = abs(float(flags["learning_rate"]) - 0.01)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as log:
        log.write(json.dumps({"step": 1, "loss": loss}) + "\\n")
    with open(os.path.join(workdir, "final_metrics.json"), "w") as out:  # --limited: stopped by --max_seconds
        json.dump({"step": int(flags["steps"]), "val_loss": loss, "val_acc": 1 - loss,
                   "time_limited": flags.get("limited") == "true"}, out)
"""


@pytest.fixture
def fake_project(tmp_path):
    """A directory holding a fake trainer module, a base flagfile and a sweep spec."""
    write(tmp_path / "fake_trainer.py", FAKE_TRAINER)
    write(tmp_path / "base.flags", "--steps=5\n--learning_rate=1.0\n")
    write(tmp_path / "demo.toml", """
        module = "fake_trainer"
        base_flagfile = "base.flags"
        workdir = "runs/demo"
        [flags]
        steps = 7
        [grid]
        learning_rate = [0.1, 0.001, 0.02]
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return tmp_path, env


def _calls(root):
    log = root / "calls.log"
    return log.read_text().split() if log.exists() else []


def test_local_sweep_runs_each_trial_and_skips_finished_ones(fake_project):
    project, env = fake_project
    root = project / "runs" / "demo"
    names = ["learning_rate-0.1", "learning_rate-0.001", "learning_rate-0.02"]

    result = run_script([LAUNCH / "sweep.py", "demo.toml", "--local"], cwd=project, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _calls(root) == names
    metrics = json.loads((root / names[1] / "final_metrics.json").read_text())
    assert metrics["step"] == 7  # the spec's fixed flag beat the base flagfile
    assert metrics["val_loss"] == pytest.approx(0.009)

    # Interrupted trial: no final metrics. Only it runs again, with the same flagfile.
    (root / names[2] / "final_metrics.json").unlink()
    flagfile_before = (root / "trials" / "2.flags").read_text()
    dry = run_script([LAUNCH / "sweep.py", "--dry_run", "demo.toml"], cwd=project, env=env)
    assert [line.split("\t")[1] for line in dry.stdout.splitlines()] == ["done", "done", "todo"]
    result = run_script([LAUNCH / "sweep.py", "demo.toml", "--local"], cwd=project, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _calls(root) == names + [names[2]]
    assert (root / "trials" / "2.flags").read_text() == flagfile_before
    assert "2 of 3 trials finished already" in result.stdout


def test_local_sweep_reports_failed_trials_and_runs_the_rest(fake_project):
    project, env = fake_project
    write(project / "failing.toml", """
        module = "fake_trainer"
        base_flagfile = "base.flags"
        workdir = "runs/failing"
        [grid]
        fail = [true, false]
    """)
    result = run_script([LAUNCH / "sweep.py", "failing.toml", "--local"], cwd=project, env=env)
    assert result.returncode == 1
    assert "fail-true (exit status 3)" in result.stderr
    assert _calls(project / "runs" / "failing") == ["fail-true", "fail-false"]


def test_local_sweep_stops_at_a_trial_stopped_by_sigterm_and_counts_it_unfinished(fake_project):
    project, env = fake_project
    write(project / "stopped.toml", """
        module = "fake_trainer"
        base_flagfile = "base.flags"
        workdir = "runs/stopped"
        [grid]
        preempt = [true, false]
    """)
    result = run_script([LAUNCH / "sweep.py", "stopped.toml", "--local"], cwd=project, env=env)
    assert result.returncode == sweep.PREEMPTED == 75
    assert "trial preempt-true stopped by SIGTERM (exit status 75), unfinished" in result.stderr
    assert "did not finish" not in result.stderr  # not counted as failed
    assert _calls(project / "runs" / "stopped") == ["preempt-true"]  # no other trial started
    dry = run_script([LAUNCH / "sweep.py", "--dry_run", "stopped.toml"], cwd=project, env=env)
    assert [line.split("\t")[1] for line in dry.stdout.splitlines()] == ["todo", "todo"]


def test_local_sweep_passes_sigterm_on_and_starts_no_other_trial(fake_project):
    project, env = fake_project
    write(project / "runner.toml", """
        module = "fake_trainer"
        base_flagfile = "base.flags"
        workdir = "runs/runner"
        [grid]
        preempt = ["runner", "false"]
    """)
    result = run_script([LAUNCH / "sweep.py", "runner.toml", "--local"], cwd=project, env=env)
    assert result.returncode == 75, result.stderr
    assert "trial preempt-runner stopped by SIGTERM (exit status 75)" in result.stderr
    assert _calls(project / "runs" / "runner") == ["preempt-runner"]


def test_a_trial_stopped_at_its_time_limit_is_unfinished_resumed_and_not_ranked(fake_project):
    project, env = fake_project
    root = project / "runs" / "demo"
    result = run_script([LAUNCH / "sweep.py", "demo.toml", "--local", "--set", "limited=true"], cwd=project, env=env)
    assert result.returncode == 75, result.stderr  # unfinished: try again later
    assert "stopped at their time limit" in result.stderr
    dry = run_script([LAUNCH / "sweep.py", "--dry_run", "demo.toml"], cwd=project, env=env)
    assert [line.split("\t")[1] for line in dry.stdout.splitlines()] == ["todo", "todo", "todo"]
    summary = run_script([LAUNCH / "sweep.py", "summarize", root], cwd=project, env=env)
    rows = [line for line in summary.stdout.splitlines() if line.startswith("| ") and "demo" not in line][1:]
    assert rows and all("unfinished (step 7)" in row and row.startswith("| - ") for row in rows), summary.stdout
    # The same command (without the limit now) continues every one of them.
    result = run_script([LAUNCH / "sweep.py", "demo.toml", "--local"], cwd=project, env=env)
    assert result.returncode == 0 and len(_calls(root)) == 6, result.stderr


def test_summary_ranks_finished_trials_best_first(fake_project):
    project, env = fake_project
    root = project / "runs" / "demo"
    assert run_script([LAUNCH / "sweep.py", "demo.toml", "--local"], cwd=project,
                      env=env).returncode == 0
    # A trial still running: its metrics log but no final metrics.
    (root / "learning_rate-0.1" / "final_metrics.json").unlink()
    write(root / "learning_rate-0.1" / "metrics.jsonl", '{"step": 3}\n{"step": 4, "lo')

    result = run_script([LAUNCH / "sweep.py", "summarize", root], cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[:4] == ["rank", "trial", "status", "learning_rate"]
    assert header[4:6] == ["val_loss", "step"]  # the ranking metric first
    assert "steps" not in header  # the fixed flags are left out
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]
    losses = {name: abs(float(name.split("-")[1]) - 0.01)
              for name in ["learning_rate-0.1", "learning_rate-0.001", "learning_rate-0.02"]}
    best_first = sorted(losses, key=losses.get)  # learning_rate-0.1, the unfinished one, is last
    assert [row[1] for row in rows] == best_first
    assert [row[0] for row in rows] == ["1", "2", "-"]
    assert rows[-1][2] == "unfinished (step 3)" and rows[-1][3] == "0.1"

    with open(root / "summary.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["trial"] for r in records] == best_first
    assert [float(r["val_loss"]) for r in records[:2]] == [losses[n] for n in best_first[:2]]
    assert (root / "summary.md").read_text().endswith(table[-1] + "\n")

    # Ranking by an accuracy-like metric defaults to higher-is-better.
    markdown, _ = sweep.summarize(root, metric="val_acc")
    ranked = [line.split("|")[2].strip() for line in markdown.splitlines()[4:7]]
    assert ranked == best_first  # val_acc = 1 - val_loss: the same order


def test_summary_of_an_empty_root_is_an_error(tmp_path):
    result = run_script([LAUNCH / "sweep.py", "summarize", tmp_path])
    assert result.returncode == 2 and "no trial directories" in result.stderr


def _finished_trials(root, metrics_by_trial, summary=None):
    for name, metrics in metrics_by_trial.items():
        write(root / name / "final_metrics.json", json.dumps(metrics))
    if summary is not None:
        write(root / "sweep.json", json.dumps({"summary": summary}))
    return root


def test_summary_ranks_accuracies_highest_first_whatever_the_spec_mode_for_its_loss(tmp_path):
    # Every shipped spec says mode = "min" for val_loss: that must not rank an accuracy worst first.
    root = _finished_trials(tmp_path / "r", {
        "low": {"val_loss": 0.5, "L0_top1": 0.171, "step": 300},
        "high": {"val_loss": 0.9, "L0_top1": 0.316, "step": 300}},
        summary={"metric": "val_loss", "mode": "min"})
    result = run_script([LAUNCH / "sweep.py", "summarize", root, "--metric", "L0_top1"])
    assert result.returncode == 0, result.stderr
    assert "higher is better" in result.stdout
    rows = [line.split("|")[2].strip() for line in result.stdout.splitlines()[4:6]]
    assert rows == ["high", "low"]
    markdown, _ = sweep.summarize(root)  # the spec's own metric, with its mode
    assert "ranked by val_loss (lower is better)" in markdown
    assert [line.split("|")[2].strip() for line in markdown.splitlines()[4:6]] == ["low", "high"]


@pytest.mark.parametrize("metric, mode", [
    ("val_loss", "min"), ("best_val_loss", "min"), ("loss", "min"), ("L0_top1", "max"), ("L5_top10", "max"),
    ("auc_overall", "max"), ("pixel_auc_mean", "max"), ("f1_splicing", "max"), ("f1_at_0.5_mean", "max"),
    ("iou_at_0.5_mean", "max"), ("image_balanced_accuracy_best", "max"), ("val_acc", "max"),
    ("step", None), ("lr", None), ("grad_norm", None), ("forged_share", None)])
def test_metric_directions(metric, mode):
    assert sweep.metric_mode(metric) == mode


def test_unknown_metrics_need_a_mode_and_missing_ones_are_refused(tmp_path):
    root = _finished_trials(tmp_path / "r", {"a": {"val_loss": 0.5, "grad_norm": 2.0},
                                             "b": {"val_loss": 0.4, "grad_norm": 1.0}})
    result = run_script([LAUNCH / "sweep.py", "summarize", root, "--metric", "grad_norm"])
    assert result.returncode == 2 and "pass --mode min or --mode max" in result.stderr
    assert not (root / "summary.md").exists()
    markdown, _ = sweep.summarize(root, metric="grad_norm", mode="min")
    assert [line.split("|")[2].strip() for line in markdown.splitlines()[4:6]] == ["b", "a"]
    result = run_script([LAUNCH / "sweep.py", "summarize", root, "--metric", "val_top1_L5"])
    assert result.returncode == 2
    assert "reports 'val_top1_L5'" in result.stderr and "grad_norm, val_loss" in result.stderr


@pytest.mark.parametrize("summary, message", [
    ('metric = "L0_top1"\nmode = "min"', "contradicts L0_top1"),
    ('mode = "max"', "needs \\[summary\\].metric"),
])
def test_spec_summary_modes_are_checked(tmp_path, summary, message):
    spec = write(tmp_path / "s.toml", f"""
        module = "experiments.imc385"
        workdir = "runs/x"
        [grid]
        level = [0, 1]
        [summary]
        {summary}
    """.replace("\n", "\n        "))
    with pytest.raises(sweep.SpecError, match=message):
        sweep.load_sweep(spec)


def _trainer_metric_names():
    """Every name the two trainers write into final_metrics.json: their tasks' validation summaries
    (from the real eval_sums and summarize, traced on tiny networks) plus the loop's own keys."""
    import jax
    import numpy as np

    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config, model
    from mantra_jax.train import imc, mantranet

    names = {"step", "best_step", "best_val_loss"}  # mantra_jax.train.loop.train
    imc_cfg = config.make_config(width_scale=0.0625, backbone="baseline", head="imc",
                                 num_classes=taxonomy.num_classes(5))
    ladn_cfg = config.make_config(width_scale=0.0625, backbone="baseline", windows=(3,))
    for task, batch in (
            (imc.make_task(imc_cfg, level=5, patch_index=None, learning_rate=1e-3),
             {"image": np.zeros((2, 16, 16, 3), np.uint8), "label": np.zeros(2, np.int32),
              "leaf": np.zeros(2, np.int32), "weight": np.ones(2, np.float32)}),
            (mantranet.make_task(ladn_cfg, patch_index=None),
             {"image": np.zeros((5, 16, 16, 3), np.uint8), "mask": np.ones((5, 16, 16), np.uint8),
              "kind": np.array([0, 1, 2, 3, -1], np.int32), "weight": np.ones(5, np.float32)})):
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), task.model_cfg))
        shapes = jax.eval_shape(lambda v, b: task.eval_sums(v, b, jax.numpy.float32), variables, batch)
        sums = jax.tree.map(lambda s: np.ones(s.shape, np.float64), shapes)
        if "hist" in sums:  # forged pixels scored high, pristine ones low: every AUC is defined
            sums["hist"][:, 0, 1:] = 0
            sums["hist"][:, 1, :-1] = 0
        names |= set(task.summarize(sums))
    return names


def test_every_metric_the_trainers_write_has_its_direction_and_the_docs_name_real_ones():
    names = _trainer_metric_names()
    assert {"val_loss", "L0_top1", "L5_top10", "f1_overall", "auc_copy_move"} <= names
    for name in names - {"step", "best_step"}:
        assert sweep.metric_mode(name) == ("min" if "loss" in name else "max"), name
    documented = set()
    for path in [LAUNCH / "README.md", REPO / "README.md", *SWEEPS.glob("*.toml")]:
        documented |= {(path.name, m) for m in re.findall(r"--metric[= ]([A-Za-z0-9_.]+)", path.read_text())}
        if path.suffix == ".toml":
            metric = sweep.read_spec(path).get("summary", {}).get("metric")
            documented |= {(path.name, metric)} if metric else set()
    assert documented, "the docs show no summarize --metric"
    assert [(f, m) for f, m in sorted(documented) if m not in names] == []


# ------------------------------------------------------------------------------------------------
# SLURM job arrays with a fake sbatch and srun
# ------------------------------------------------------------------------------------------------
def _fake_command(bin_dir: Path, name: str, output: str) -> Path:
    """An executable `name` that appends its arguments (one per line) to bin_dir/name.calls."""
    path = bin_dir / name
    path.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        {{ for arg in "$@"; do echo "$arg"; done; echo "--"; }} >> "{bin_dir / name}.calls"
        {output}
    """))
    path.chmod(0o755)
    return path


def _recorded_calls(bin_dir: Path, name: str) -> list[list[str]]:
    path = bin_dir / f"{name}.calls"
    if not path.exists():
        return []
    calls, current = [], []
    for line in path.read_text().splitlines():
        if line == "--":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


def test_slurm_submission_is_one_job_array_of_the_unfinished_trials(fake_project):
    project, env = fake_project
    bin_dir = project / "bin"
    bin_dir.mkdir()
    _fake_command(bin_dir, "sbatch", 'echo "Submitted batch job 4242"')
    # srun runs its command here (after its options), so an array task trains for real.
    _fake_command(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done; exec "$@"')
    env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    write(project / "array.toml", """
        module = "fake_trainer"
        base_flagfile = "base.flags"
        workdir = "runs/array"
        [grid]
        learning_rate = [0.1, 0.2, 0.3, 0.4, 0.5]
        [slurm]
        gpus_per_node = 2
        exclusive = true
        time = "1:00:00"
        array_parallelism = 2
    """)
    root = project / "runs" / "array"
    names = [f"learning_rate-0.{i}" for i in range(1, 6)]
    write(root / names[1] / "final_metrics.json", '{"val_loss": 1.0}')

    result = run_script([LAUNCH / "sweep.py", "array.toml", "--slurm",
                         "--sbatch_args=--partition=debug --time=0:10:00"], cwd=project, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Submitted batch job 4242" in result.stdout
    # The spec's options, then the command line's (sbatch lets the later --time win).
    assert _recorded_calls(bin_dir, "sbatch") == [[
        "--array=0,2-4%2", "--job-name=array", f"--output={root}/slurm/%A_%a.out",
        "--gpus-per-node=2", "--exclusive", "--time=1:00:00", "--partition=debug", "--time=0:10:00",
        str(LAUNCH / "slurm.sbatch"), "fake_trainer", f"--flagfile={root}/trials/%a.flags"]]
    assert sorted(p.name for p in (root / "trials").iterdir()) == [f"{i}.flags" for i in range(5)]
    assert (root / "trials" / "3.flags").read_text().splitlines()[-1] == f"--workdir={root / names[3]}"

    # Array task 3, as SLURM runs it: launch/slurm.sbatch on trials/3.flags.
    task_env = dict(env, SLURM_ARRAY_TASK_ID="3", SLURM_JOB_ID="4245", SLURM_NTASKS="1",
                    SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="gpu1", SLURM_SUBMIT_DIR=str(project),
                    PYTHON=sys.executable)
    task_env.pop("WORKDIR", None)
    ran = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "fake_trainer",
                          f"--flagfile={root}/trials/%a.flags"], env=task_env, cwd=project,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert _calls(root) == [names[3]]
    assert (root / names[3] / "final_metrics.json").is_file()
    assert _recorded_calls(bin_dir, "srun")[-1][-3:] == [
        "-m", "fake_trainer", f"--flagfile={root}/trials/3.flags"]


def test_slurm_submission_of_a_finished_sweep_submits_nothing(fake_project):
    project, env = fake_project
    bin_dir = project / "bin"
    bin_dir.mkdir()
    _fake_command(bin_dir, "sbatch", 'echo "Submitted batch job 1"')
    env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    assert run_script([LAUNCH / "sweep.py", "demo.toml", "--local"], cwd=project,
                      env=env).returncode == 0
    result = run_script([LAUNCH / "sweep.py", "demo.toml", "--slurm"], cwd=project, env=env)
    assert result.returncode == 0 and "3 of 3 trials finished already, 0 to run" in result.stdout
    assert _recorded_calls(bin_dir, "sbatch") == []


def test_array_ranges():
    assert sweep.array_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert sweep.array_ranges([4]) == "4"


def test_slurm_batch_script_runs_one_srun_per_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_command(bin_dir, "srun", "")
    workdir = tmp_path / "shared" / "run"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", WORKDIR=str(workdir),
               SLURM_JOB_ID="77", SLURM_NTASKS="8", SLURM_JOB_NUM_NODES="2",
               SLURM_JOB_NODELIST="gpu[1-2]", SLURM_SUBMIT_DIR=str(REPO), PYTHON="python3")
    result = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "experiments.imc385",
                             "--flagfile=experiments/flags/imc385.flags"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    check, train = _recorded_calls(bin_dir, "srun")
    assert check[-2] == "-f"  # the shared-storage check, one task per node
    assert train[train.index("python3"):] == [
        "python3", "-m", "experiments.imc385", "--flagfile=experiments/flags/imc385.flags",
        f"--workdir={workdir}"]
    assert workdir.is_dir()
    text = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=4" in text and "#SBATCH --gpus-per-node=4" in text


def test_tpu_pod_script_runs_the_command_on_every_worker(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_command(bin_dir, "gcloud", "")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), "my-tpu", "us-central2-b", "--project=proj", "--",
         "python", "-m", "experiments.imc385", "--workdir=gs://bucket/run 1"],
        env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    [call] = _recorded_calls(bin_dir, "gcloud")
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in call and "--zone=us-central2-b" in call and "--project=proj" in call
    command = next(arg for arg in call if arg.startswith("--command="))[len("--command="):]
    # The remote shell must see the user's words unchanged, the space included.
    echoed = subprocess.run(["bash", "-c", command.replace("cd ~/mantra_jax && ", "")
                             .replace("python -m", "printf '%s\\n'")],
                            capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert echoed == ["experiments.imc385", "--workdir=gs://bucket/run 1"]
    assert command.startswith("cd ~/mantra_jax && ")
