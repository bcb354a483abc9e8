"""benchmarks/accelerator.py: a quick run end to end on the CPU, its verdicts, and its PyTorch peer."""
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import accelerator, harness, torch_peer

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quick_row_runs_end_to_end_and_writes_json(tmp_path):
    out = tmp_path / "accelerator.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator", "--quick", "--rows", "infer", "--dtypes", "float32",
         "--repeats", "2", "--no_torch", "--no_loader", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())

    (row,) = report["jax"]
    assert "error" not in row, row
    assert row["row"] == "infer" and row["dtype"] == "float32" and row["tiled"] is False
    assert len(row["times_s"]) == 2 and row["median_s"] > 0
    # The released network costs ~8.7 MFLOP per pixel; the 1/8-width one about 1/40 of that.
    per_pixel = row["flops"] / (96 * 128)
    assert 5e4 < per_pixel < 1e6, per_pixel
    peak = report["peak"]["dtypes"]["float32"]
    assert peak["tflops_per_s"] == pytest.approx(2 * report["peak"]["n"] ** 3 / peak["median_s"] / 1e12)

    (summary,) = report["summary"]
    assert summary["ms"] == pytest.approx(1e3 * row["median_s"])
    assert summary["tflops_per_s"] == pytest.approx(row["flops"] / row["median_s"] / 1e12)
    assert summary["peak_share"] == pytest.approx(summary["tflops_per_s"] / peak["tflops_per_s"])
    assert summary["torch"] == "n/a"
    table = done.stdout
    assert "infer" in table and "float32" in table and "1x96x128" in table


def test_summary_rates_and_torch_ratio():
    spec = accelerator.row_specs("full")["imc_train"]
    jax_row = {"row": "imc_train", "dtype": "bfloat16", "median_s": 0.08, "flops": 24e12, "peak_bytes": 3e9}
    peak = {"dtypes": {"bfloat16": {"tflops_per_s": 600.0}}}
    s = accelerator.summarize_row(jax_row, {"median_s": 0.1}, peak, spec)
    assert s["per_s"] == pytest.approx(64 / 0.08)
    assert s["tflops_per_s"] == pytest.approx(300.0)
    assert s["peak_share"] == pytest.approx(0.5)
    assert s["speed_ratio"] == pytest.approx(1.25)
    assert accelerator.summarize_row(jax_row, {"error": "OOM"}, peak, spec)["torch"] == "OOM"
    without = accelerator.summarize_row(jax_row, None, peak, spec)
    assert without["torch"] == "n/a" and without["speed_ratio"] is None  # every row carries it


def test_torch_peer_matches_the_jax_network():
    torch = pytest.importorskip("torch")  # an optional dependency of the benchmark only
    del torch
    check = torch_peer.check_torch_peer()
    assert check["counts"]["released"]["jax"] == [3_805_078, 3_804_950]
    assert all(v["jax"] == v["torch"] for v in check["counts"].values())
    for key, diff in check["max_abs_diff"].items():
        assert check["max_abs_logit"][key] > 1e-2, key  # the comparison is not between zeros
        assert diff < 1e-4 * max(1.0, check["max_abs_logit"][key]), (key, diff)
    assert check["ok"]


def test_benchmark_variables_have_the_model_shapes():
    import jax

    from mantra_jax.nn import config, model

    cfg = config.make_config(width_scale=accelerator.QUICK_WIDTH_SCALE)
    variables = harness.benchmark_variables(cfg)
    model.check_variables(variables, cfg)
    leaves = jax.tree_util.tree_leaves(variables)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert np.all(variables["batch_stats"]["bnorm"]["moving_variance"] == 1)


def test_measurement_order_puts_the_headline_pairs_first():
    first, rest = accelerator.measurement_order(accelerator.ROWS, accelerator.DTYPES)
    assert first == [("imc_train", "bfloat16"), ("infer", "bfloat16")]
    assert rest == [("e2e_train", "bfloat16"), ("infer_large", "bfloat16"), ("infer_sizes", "bfloat16"),
                    ("imc_train", "float32"), ("e2e_train", "float32"), ("infer", "float32"),
                    ("infer_large", "float32"), ("infer_sizes", "float32")]
    assert accelerator.measurement_order(["infer_large", "infer"], ["float32"]) == ([], [("infer", "float32"),
                                                                                         ("infer_large", "float32")])


def test_the_torch_peer_runs_only_the_rows_jax_started(monkeypatch, tmp_path, capsys):
    """A PyTorch row whose JAX row was never started (the budget) would only spend the budget;
    the compilation row has no peer."""
    calls = []

    def fake_child(module, args, timeout=None, env=None):
        calls.append(args)
        kind = args[args.index("--child") + 1]
        if kind == "row":  # the headline rows take so long that no other row may start
            row, dtype = args[args.index("--row") + 1], args[args.index("--dtypes") + 1]
            return {"row": row, "dtype": dtype, "median_s": 0.1, "flops": 1e9, "process_s": 1e6}
        if kind == "torch":
            pairs = [p.split(":") for p in args[args.index("--pairs") + 1].split(",")]
            return {"rows": [{"row": r, "dtype": d, "median_s": 0.2} for r, d in pairs], "process_s": 1.0}
        return {"error": "exit 1", "detail": "", "process_s": 1.0}

    monkeypatch.setattr(harness, "run_child", fake_child)
    monkeypatch.setattr(accelerator, "_torch_available", lambda: "2.13.0")
    assert accelerator.main(["--quick", "--dtypes", "bfloat16", "--no_loader", "--budget_s", "1000",
                             "--json", str(tmp_path / "a.json")]) == 0
    torch_pairs = [c[c.index("--pairs") + 1] for c in calls if "torch" in c]
    assert torch_pairs == ["imc_train:bfloat16,infer:bfloat16"]
    report = json.loads((tmp_path / "a.json").read_text())
    skipped = {r["row"] for r in report["jax"] if r.get("error") == "skipped"}
    assert skipped == {"e2e_train", "infer_large", "infer_sizes"}
    assert {s["row"]: s["speed_ratio"] for s in report["summary"]}["infer"] == pytest.approx(2.0)


def test_compilation_row_times_the_first_call_of_each_new_size(monkeypatch, capsys):
    from mantra_jax.infer import predict

    spec = accelerator.row_specs("quick")["infer_sizes"]
    assert spec.sizes and len(set(spec.sizes)) == len(spec.sizes)

    class CompilingPredictor:  # what jit does, without its minutes on a CPU: a new size compiles
        def __init__(self, cfg, variables, dtype, tile):
            self.compiled = set()

        def predict(self, rgb):
            if rgb.shape[:2] not in self.compiled:
                time.sleep(0.2)
                self.compiled.add(rgb.shape[:2])

        def is_tiled(self, height, width):
            return height > 30

    monkeypatch.setattr(predict, "Predictor", CompilingPredictor)
    monkeypatch.setattr(harness, "benchmark_variables", lambda cfg: {})
    tiny = accelerator.RowSpec("infer_sizes", "sizes", 1, 24, 32, sizes=((24, 32), (32, 24)))
    sizes = accelerator.measure_sizes(tiny, "float32", "quick", repeats=2)
    assert [(z["size"], z["tiled"]) for z in sizes] == [("24x32", False), ("32x24", True)]
    assert all(z["cold_s"] >= 0.2 > 0.05 > z["steady_s"] for z in sizes), sizes
    assert harness.tagged(capsys.readouterr().out, "PARTIAL") == sizes  # kept if the process is stopped
    summary = accelerator.summarize_row({"row": "infer_sizes", "dtype": "float32", "sizes": sizes}, None, None, tiny)
    assert summary["ms"] is None and summary["sizes"] == sizes
    assert "infer_sizes" not in accelerator.format_table([summary])
    (line,) = accelerator.format_sizes([summary])
    assert "24x32 0.2" in line and "32x24 0.2" in line and "(tiled)" in line


def test_a_stopped_compilation_row_keeps_the_sizes_it_finished(monkeypatch, tmp_path, capsys):
    finished = [{"size": "64x96", "cold_s": 8.0, "steady_s": 0.05, "tiled": False}]

    def fake_child(module, args, timeout=None, env=None):
        if "row" in args:
            return {"error": "timeout", "detail": "no result within 9 s", "rows": finished, "process_s": 9.0}
        return {"error": "exit 1", "detail": "", "process_s": 1.0}

    monkeypatch.setattr(harness, "run_child", fake_child)
    accelerator.main(["--quick", "--rows", "infer_sizes", "--dtypes", "float32", "--no_torch", "--no_loader",
                      "--json", str(tmp_path / "a.json")])
    (summary,) = json.loads((tmp_path / "a.json").read_text())["summary"]
    assert summary["sizes"] == finished and summary["error"] == "timeout"
    assert "64x96 8 s / 50 ms; then timeout" in capsys.readouterr().out


def test_spent_budget_starts_no_measurement_and_says_so(tmp_path):
    out = tmp_path / "accelerator.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator", "--quick", "--rows", "infer,imc_train", "--dtypes", "bfloat16",
         "--no_torch", "--no_loader", "--budget_s", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["peak"]["error"] == "skipped"
    assert [(r["row"], r["error"]) for r in report["jax"]] == [("imc_train", "skipped"), ("infer", "skipped")]
    assert "s of --budget_s left)" in done.stderr


def test_cpu_shapes_are_the_full_width_network_at_the_issue_16_shapes():
    specs = accelerator.row_specs("cpu")
    assert {name: s.shape for name, s in specs.items()} == {
        "imc_train": "4x128x128", "e2e_train": "2x128x128", "infer": "1x256x384"}
    assert all(s.repeats == 3 and s.warmup == 1 for s in specs.values())
    assert accelerator.model_config("imc", "cpu").num_classes == 380
    assert accelerator.model_config("infer", "cpu") == accelerator.model_config("infer", "full")


def test_train_rows_trace_the_trainers_own_step_with_the_papers_optimisers():
    import jax
    import jax.numpy as jnp
    import optax

    from mantra_jax.nn import model
    from mantra_jax.train import loop

    for row, inner_state in (("imc_train", tuple), ("e2e_train", optax.MultiTransformState)):
        spec = accelerator.row_specs("quick")[row]
        task, step = accelerator.train_step(spec, "quick", jnp.float32)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), task.model_cfg))
        state = jax.eval_shape(lambda v: loop.initial_state(task, v, loop.LoopConfig.grad_clip_norm), variables)
        clip_state, task_state = state["opt_state"]  # the clipping, then the task's optimiser
        assert isinstance(task_state, inner_state), (row, type(task_state))
        batch = accelerator.train_batch(spec, task.model_cfg.num_classes)
        new_state, metrics = jax.eval_shape(step, state, batch, jnp.float32(1.0))
        assert {"loss", "grad_norm"} <= set(metrics)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
