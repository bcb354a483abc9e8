"""ManTra-Net on an accelerator (or a CPU): step times, FLOP rate against the measured peak, memory,
and the PyTorch peer of the same network side by side, in float32 and bfloat16.

    python -m benchmarks.accelerator [--quick | --cpu_shapes] [--json PATH] [--rows ROW,...]
                                     [--dtypes D,...] [--repeats 10] [--no_torch] [--no_loader]
                                     [--budget_s S]
    (from the repository root; on an H100 or H200:
     python -m benchmarks.accelerator --json $OUT/accelerator.json)

Rows and their shape sets (batch x height x width):
  row          full size (default)     --quick (1/8 width)     --cpu_shapes (full width)
  imc_train    64 x 128 x 128          4 x 32 x 32             4 x 128 x 128
  e2e_train    16 x 256 x 256          2 x 64 x 64             2 x 128 x 128
  infer        1 x 768 x 1024          1 x 96 x 128            1 x 256 x 384
  infer_large  1 x 3000 x 4000 (tiled) 1 x 300 x 400 (tiles of 128)   -
  infer_sizes  480x640, 600x800,       64x96, 80x112, 120x160  -
               1080x1440
A train row runs the trainer's own step, `mantra_jax.train.loop.make_train_step` of the task the
trainers build (IMC-385: `train.imc.make_task` at level 5; end to end: `train.mantranet.make_task`
with the paper's optimiser of mantranet.flags, --init=half_random: Featex at its own Adam rate),
with the trainer's default gradient clipping, jitted with the state donated over a ("data",) mesh
of one device. Inference is `Predictor.predict` on a uint8 image, host to host. infer_sizes is
what a new image size costs: one Predictor predicts one image of each size in turn, its first call
(tracing and compilation included) against the median of 3 calls after it. Weights are random
(harness.benchmark_variables: speed does not depend on them). --cpu_shapes uses 3 timed calls after
one warm-up.

Each (row, dtype) runs in its own process, so that one row's memory peak cannot hide another's;
the PyTorch peer (benchmarks/torch_peer.py; "n/a" when `import torch` fails) runs its rows in
one process after the JAX rows of the same stage. Figures: the median of the timed calls (after 2
warm-up calls), samples/s, TFLOP/s from XLA's cost analysis of the program as lowered, % of the
peak of a large matrix product measured in the same run, peak memory, torch ms and speed_ratio =
torch ms / JAX ms (>= 1: JAX at least as fast). Order: the peak products, the headline pairs
(imc_train and infer in bfloat16), the other rows (bfloat16 first), the PyTorch peer's equivalence
check (on the CPU), the data loaders. --budget_s S: no process starts once S seconds are spent
("skipped"), each stops at their end ("timeout"). --json PATH is rewritten after every row.
benchmarks/README.md says more.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Optional

from benchmarks import harness

ROWS = ("imc_train", "e2e_train", "infer", "infer_large", "infer_sizes")
DTYPES = ("float32", "bfloat16")
QUICK_WIDTH_SCALE = 0.125
# The paper's learning rates (experiments/flags/imc385.flags, mantranet.flags).
LEARNING_RATE, FEATEX_LEARNING_RATE = 1e-4, 5e-5
# Measured first (JAX, then the PyTorch peer), so that a budget spends itself on them.
HEADLINE_PAIRS = (("imc_train", "bfloat16"), ("infer", "bfloat16"))
# With --budget_s: no measuring process starts with less than this many seconds left.
MIN_START_S = 5.0


def measurement_order(rows, dtypes) -> tuple[list, list]:
    """(first, rest): the requested (row, dtype) pairs of HEADLINE_PAIRS, then the others,
    bfloat16 before float32, each in ROWS order."""
    pairs = [(row, dtype) for row in rows for dtype in dtypes]
    first = [pair for pair in HEADLINE_PAIRS if pair in pairs]
    rest = sorted((pair for pair in pairs if pair not in first),
                  key=lambda pair: (pair[1] != "bfloat16", ROWS.index(pair[0]), DTYPES.index(pair[1])))
    return first, rest


@dataclasses.dataclass(frozen=True)
class RowSpec:
    name: str
    kind: str  # "imc", "e2e" (train steps), "infer" or "sizes" (compilation per image size)
    batch: int
    height: int
    width: int
    repeats: Optional[int] = None  # None: --repeats
    tile: Optional[int] = None  # inference: None tiles only above the Predictor's threshold
    warmup: int = harness.WARMUP_CALLS
    sizes: tuple = ()  # kind "sizes": the (height, width) of each image, in order

    @property
    def shape(self) -> str:
        if self.sizes:
            return ",".join(f"{h}x{w}" for h, w in self.sizes)
        return f"{self.batch}x{self.height}x{self.width}"


# Shape set -> (width scale of the network, rows).
SHAPE_SETS = {
    "full": (1.0, (RowSpec("imc_train", "imc", 64, 128, 128), RowSpec("e2e_train", "e2e", 16, 256, 256),
                   RowSpec("infer", "infer", 1, 768, 1024), RowSpec("infer_large", "infer", 1, 3000, 4000, repeats=3),
                   RowSpec("infer_sizes", "sizes", 1, 480, 640, repeats=3,
                           sizes=((480, 640), (600, 800), (1080, 1440))))),
    "quick": (QUICK_WIDTH_SCALE, (RowSpec("imc_train", "imc", 4, 32, 32), RowSpec("e2e_train", "e2e", 2, 64, 64),
                                  RowSpec("infer", "infer", 1, 96, 128),
                                  RowSpec("infer_large", "infer", 1, 300, 400, repeats=3, tile=128),
                                  RowSpec("infer_sizes", "sizes", 1, 64, 96, repeats=3,
                                          sizes=((64, 96), (80, 112), (120, 160))))),
    # The full-width network on the shapes a CPU affords, median of 3 after one warm-up.
    "cpu": (1.0, (RowSpec("imc_train", "imc", 4, 128, 128, repeats=3, warmup=1),
                  RowSpec("e2e_train", "e2e", 2, 128, 128, repeats=3, warmup=1),
                  RowSpec("infer", "infer", 1, 256, 384, repeats=3, warmup=1))),
}


def row_specs(shapes: str = "full") -> dict[str, RowSpec]:
    return {s.name: s for s in SHAPE_SETS[shapes][1]}


def model_config(kind: str, shapes: str = "full"):
    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config

    scale = SHAPE_SETS[shapes][0]
    if kind == "imc":
        return config.make_config(head="imc", num_classes=taxonomy.num_classes(taxonomy.LEAF_LEVEL),
                                  width_scale=scale)
    return config.make_config(width_scale=scale) if scale != 1.0 else config.released()


def train_step(spec: RowSpec, shapes: str, dtype):
    """(task, step): the task a trainer builds for a train row and the trainer's own step function
    of it (`loop.make_train_step`, not jitted: (state, batch, lr_scale) -> (state, metrics))."""
    from mantra_jax.imc import taxonomy
    from mantra_jax.train import imc, loop, mantranet

    cfg = model_config(spec.kind, shapes)
    if spec.kind == "imc":
        task = imc.make_task(cfg, level=taxonomy.LEAF_LEVEL, patch_index=None, learning_rate=LEARNING_RATE)
    else:
        task = mantranet.make_task(cfg, patch_index=None, learning_rate=LEARNING_RATE)
        # The paper's setting (half_random) needs an IMC checkpoint to start from, not its optimiser.
        task = dataclasses.replace(task, optimizer=mantranet.make_optimizer(
            "half_random", LEARNING_RATE, FEATEX_LEARNING_RATE))
    return task, loop.make_train_step(task, loop.LoopConfig.grad_clip_norm, dtype)


def train_batch(spec: RowSpec, num_classes: int) -> dict:
    """A random host batch of a train row: {"image" uint8, "label" int32 | "mask" uint8}."""
    import numpy as np

    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (spec.batch, spec.height, spec.width, 3), dtype=np.uint8)}
    if spec.kind == "imc":
        batch["label"] = rng.integers(0, num_classes, spec.batch).astype(np.int32)
    else:
        batch["mask"] = (rng.random((spec.batch, spec.height, spec.width)) < 0.3).astype(np.uint8)
    return batch


def _device_description(device) -> str:
    return f"{device.platform}:{device.device_kind}"


# --------------------------------------------------------------------------------------------
# JAX measurements (one per subprocess)
# --------------------------------------------------------------------------------------------
def measure_peak(dtypes) -> dict:
    """Achieved rate of a large square matrix product per dtype: the measured peak."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    device = jax.devices()[0]
    accelerator = device.platform != "cpu"
    n = 16384 if accelerator else 1024  # large enough that the dispatch of one call is negligible
    repeats = 20 if accelerator else 5
    out = {"device": _device_description(device), "n": n, "dtypes": {}}
    rng = np.random.default_rng(0)
    for name in dtypes:
        dtype = jnp.dtype(name)
        a = jax.device_put(jnp.asarray(rng.standard_normal((n, n), np.float32), dtype), device)
        b = jax.device_put(jnp.asarray(rng.standard_normal((n, n), np.float32), dtype), device)
        compiled = jax.jit(jnp.matmul).lower(a, b).compile()
        times = harness.time_calls(lambda: jax.block_until_ready(compiled(a, b)), repeats, warmup=3)
        flops, median = 2.0 * n**3, harness.median(times)
        out["dtypes"][name] = {"flops": flops, "median_s": median, "times_s": times,
                               "xla_flops": harness.flops(compiled), "tflops_per_s": flops / median / 1e12}
    return out


def measure_sizes(spec: RowSpec, dtype_name: str, shapes: str, repeats: int) -> list[dict]:
    """One Predictor predicts an image of each of `spec.sizes` in turn: its first call (tracing,
    compilation and XLA's memory analysis of the whole-image program: what a new size costs; the
    first size also pays the process's one-time costs) against the median of `repeats` calls
    after it. Each size is also printed as a PARTIAL line: a process stopped by its timeout keeps
    the sizes it finished."""
    import numpy as np

    from mantra_jax.infer.predict import Predictor

    cfg = model_config("infer", shapes)
    predictor = Predictor(cfg, harness.benchmark_variables(cfg), dtype=dtype_name, tile=spec.tile)
    out = []
    for height, width in spec.sizes:
        rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        start = time.perf_counter()
        predictor.predict(rgb)
        cold = time.perf_counter() - start
        steady = harness.median(harness.time_calls(lambda: predictor.predict(rgb), repeats, warmup=0))
        out.append({"size": f"{height}x{width}", "cold_s": cold, "steady_s": steady,
                    "tiled": predictor.is_tiled(height, width)})
        harness.emit(out[-1], "PARTIAL")
    return out


def measure_jax_row(spec: RowSpec, dtype_name: str, shapes: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mantra_jax.nn import tiled

    device = jax.devices()[0]
    dtype = jnp.dtype(dtype_name)
    result = {"row": spec.name, "dtype": dtype_name, "shape": spec.shape, "batch": spec.batch,
              "device": _device_description(device), "repeats": repeats}
    if spec.kind == "sizes":
        return {**result, "sizes": measure_sizes(spec, dtype_name, shapes, repeats)}

    if spec.kind in ("imc", "e2e"):
        from jax.sharding import NamedSharding, PartitionSpec as P

        from mantra_jax.train import loop

        start = time.perf_counter()
        task, step = train_step(spec, shapes, dtype)
        mesh = loop.make_mesh(1)  # one chip: the figures are per device
        replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        variables = jax.device_put(harness.benchmark_variables(task.model_cfg), replicated)
        state = jax.jit(lambda v: loop.initial_state(task, v, loop.LoopConfig.grad_clip_norm),
                        out_shardings=replicated)(variables)
        batch = jax.device_put(train_batch(spec, task.model_cfg.num_classes), split)
        lr_scale = np.float32(1.0)
        lowered = jax.jit(step, in_shardings=(replicated, split, None), out_shardings=(replicated, replicated),
                          donate_argnums=0).lower(state, batch, lr_scale)  # as loop.train jits it
        compiled = lowered.compile()
        result["compile_s"] = time.perf_counter() - start
        result["flops"] = harness.flops(lowered)
        result["flops_compiled"] = harness.flops(compiled)
        result["xla_bytes"] = harness.xla_bytes(compiled)[0]
        holder = {"state": state}

        def call():
            holder["state"], metrics = compiled(holder["state"], batch, lr_scale)  # the state is donated
            jax.block_until_ready((holder["state"], metrics))
            holder["loss"] = metrics["loss"]
    else:
        from mantra_jax.infer.predict import Predictor

        cfg = model_config(spec.kind, shapes)
        # `infer` is the whole-image pass (what the PyTorch peer runs; a user's --max_untiled_pixels),
        # `infer_large` the tiled one; Predictor's default tiles every image at a few fixed shapes.
        whole = {} if spec.tile is not None else {"max_untiled_pixels": spec.height * spec.width}
        predictor = Predictor(cfg, harness.benchmark_variables(cfg), dtype=dtype_name, tile=spec.tile, **whole)
        rgb = np.random.default_rng(0).integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)

        def call():
            predictor.predict(rgb)  # a numpy array: the device work is done

    rss_before = harness.rss_bytes()
    if "compile_s" not in result:
        start = time.perf_counter()
        call()  # compiles (and is one more warm-up call)
        result["compile_s"] = time.perf_counter() - start
    times = harness.time_calls(call, repeats, warmup=spec.warmup)
    if spec.kind in ("imc", "e2e"):
        result["final_loss"] = float(holder["loss"])
    result["times_s"] = times
    result["median_s"] = harness.median(times)
    peak, kind = harness.device_peak(device, rss_before)
    if peak is not None:
        result["peak_bytes"], result["peak_kind"] = peak, kind

    if spec.kind == "infer":
        # After the first call, which compiled the whole-image program (and asked XLA what it needs).
        result["tiled"] = predictor.is_tiled(spec.height, spec.width)
        # The useful work: the whole-image program, lowered (traced) but never compiled or run, so
        # that a tiled row counts no halo and the count costs no memory at any size.
        image = jax.ShapeDtypeStruct((spec.height, spec.width, 3), jnp.uint8)
        result["flops"] = harness.flops(tiled.whole_image_map.lower(predictor.variables, image, cfg, dtype))
    return result


def measure_loaders(shapes: str, seconds: float) -> dict:
    """The IMC and forgery streams at the train rows' shapes, one grain worker per usable core."""
    import cv2

    from benchmarks import loader
    from mantra_jax.data import bundled, forgery_pipeline, imc_pipeline, photos

    cv2.setNumThreads(1)
    specs = row_specs(shapes)
    workers = harness.usable_cores()
    out = {"workers": workers, "seconds": seconds}
    with tempfile.TemporaryDirectory() as tmp:
        folder = bundled.default_photo_dir(cache_dir=tmp)
        index = photos.build_patch_index(folder, cache_dir=os.path.join(tmp, "index"))
        imc, e2e = specs["imc_train"], specs["e2e_train"]
        dataset = imc_pipeline.make_train_dataset(index, seed=0, batch_size=imc.batch, crop=imc.height,
                                                  worker_count=workers, prefetch_buffer=4)
        out["imc"] = {"shape": imc.shape, "samples_per_s": loader.loader_rate(dataset, workers, imc.batch, seconds)}
        dataset = forgery_pipeline.make_train_dataset(index, seed=0, batch_size=e2e.batch, patch_size=e2e.height,
                                                      worker_count=workers, prefetch_buffer=4)
        out["e2e"] = {"shape": e2e.shape, "samples_per_s": loader.loader_rate(dataset, workers, e2e.batch, seconds)}
    return out


# --------------------------------------------------------------------------------------------
# The orchestrating process (never imports JAX or torch: each measurement has its own process)
# --------------------------------------------------------------------------------------------
def _torch_available() -> Optional[str]:
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _fmt(value, spec: str = ".3g", missing: str = "-") -> str:
    if value is None or value != value:
        return missing
    return format(value, spec)


def summarize_row(jax_row: dict, torch_row: Optional[dict], peak: Optional[dict], spec: RowSpec) -> dict:
    """Derived figures of one (row, dtype): rates, peak share, the torch ratio."""
    s = {"row": jax_row["row"], "dtype": jax_row["dtype"], "shape": spec.shape}
    if "error" in jax_row:
        s["error"] = jax_row["error"]
    median = jax_row.get("median_s")
    s["ms"] = None if median is None else 1e3 * median
    s["per_s"] = None if median is None else spec.batch / median
    flops = jax_row.get("flops")
    s["tflops_per_s"] = None if (median is None or flops is None) else flops / median / 1e12
    peak_rate = (peak or {}).get("dtypes", {}).get(jax_row["dtype"], {}).get("tflops_per_s")
    s["peak_share"] = None if (s["tflops_per_s"] is None or not peak_rate) else s["tflops_per_s"] / peak_rate
    s["peak_gb"] = None if jax_row.get("peak_bytes") is None else jax_row["peak_bytes"] / 1e9
    if "sizes" in jax_row:
        s["sizes"] = jax_row["sizes"]
    s["speed_ratio"] = None  # torch ms / JAX ms, where both ran
    if torch_row is None:
        s["torch"] = "n/a"
    elif "error" in torch_row:
        s["torch"] = torch_row["error"]
    else:
        s["torch_ms"] = 1e3 * torch_row["median_s"]
        s["speed_ratio"] = None if s["ms"] is None else s["torch_ms"] / s["ms"]
    return s


def format_table(summaries: list[dict]) -> str:
    header = (f"{'row':<12} {'dtype':<9} {'shape':<13} {'ms/step':>9} {'samples/s':>10} {'TFLOP/s':>9} "
              f"{'% peak':>7} {'peak GB':>8} {'torch ms':>9} {'jax/torch':>9}")
    lines = [header, "-" * len(header)]
    for s in summaries:
        if s["row"] == "infer_sizes":  # its own lines (format_sizes)
            continue
        share = None if s.get("peak_share") is None else 100 * s["peak_share"]
        torch_ms = _fmt(s.get("torch_ms"), ".4g") if "torch_ms" in s else s.get("torch", "n/a")
        ms = _fmt(s.get("ms"), ".4g", missing=s.get("error", "-"))
        lines.append(f"{s['row']:<12} {s['dtype']:<9} {s['shape']:<13} {ms:>9} {_fmt(s.get('per_s'), '.4g'):>10} "
                     f"{_fmt(s.get('tflops_per_s'), '.3g'):>9} {_fmt(share, '.1f'):>7} "
                     f"{_fmt(s.get('peak_gb'), '.3g'):>8} {torch_ms:>9} {_fmt(s.get('speed_ratio'), '.2f'):>9}")
    return "\n".join(lines)


def format_sizes(summaries: list[dict]) -> list[str]:
    """The compilation rows: per image size, the first call against the steady calls."""
    lines = []
    for s in summaries:
        if s["row"] != "infer_sizes":
            continue
        head = f"compilation per image size, {s['dtype']} (first call of a new size, compilation included / median after it):"
        if "sizes" not in s:
            lines.append(f"{head} {s.get('error', 'not measured')}")
            continue
        lines.append(f"{head} {sizes_text(s['sizes'])}" + (f"; then {s['error']}" if "error" in s else ""))
    return lines


def sizes_text(sizes: list[dict]) -> str:
    """`480x640 12.3 s / 14.2 ms; ...`: per size, the first call and the median after it."""
    return "; ".join(f"{z['size']} {z['cold_s']:.3g} s / {1e3 * z['steady_s']:.4g} ms" + (" (tiled)" if z["tiled"] else "")
                     for z in sizes)


SHAPE_FLAGS = {"full": [], "quick": ["--quick"], "cpu": ["--cpu_shapes"]}  # passed on to the children
SHAPE_NOTES = {"full": "", "quick": "; --quick: 1/8-width network, small inputs",
               "cpu": "; --cpu_shapes: full-width network, CPU-sized inputs"}


def _write_json(path: Optional[str], report: dict):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, path)


def _parse_list(text: str, allowed, flag: str) -> list[str]:
    items = [item for item in text.split(",") if item]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SystemExit(f"{flag}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return items


def orchestrate(args) -> int:
    specs = row_specs(args.shapes)
    rows = _parse_list(args.rows or ",".join(specs), tuple(specs), "--rows")
    dtypes = _parse_list(args.dtypes, DTYPES, "--dtypes")
    common = ["--repeats", str(args.repeats)] + SHAPE_FLAGS[args.shapes]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick, "shapes": args.shapes,
              "host": {"cpus": harness.usable_cores(), "machine": platform.machine(),
                       "python": platform.python_version()},
              "rows": {name: dataclasses.asdict(specs[name]) for name in rows}, "jax": [], "summary": []}

    def progress(text):
        print(text, file=sys.stderr, flush=True)

    # Every measurement in its own process, in the order of measurement_order; with --budget_s none
    # starts once the budget is spent, and each is stopped at the budget's end.
    deadline = None if args.budget_s is None else time.monotonic() + args.budget_s

    def run(label: str, child_args: list[str], limit: float, env: Optional[dict] = None, needs: float = 0.0) -> dict:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < max(MIN_START_S, needs):
            progress(f"{label}: not started ({left:.0f} s of --budget_s left)")
            return {"error": "skipped", "detail": f"not started: {left:.0f} s of --budget_s left", "process_s": 0.0}
        progress(f"{label} ...")
        return harness.run_child("benchmarks.accelerator", child_args, limit if left is None else min(limit, left), env)

    peak = run("peak matrix products", ["--child", "peak", "--dtypes", ",".join(dtypes)] + common, args.row_timeout)
    report["peak"] = peak
    report["device"] = peak.get("device")
    report["versions"] = peak.get("versions", {})
    _write_json(args.json, report)

    torch_version = None if args.no_torch else _torch_available()
    report["torch"] = {"version": torch_version, "rows": []} if torch_version else None
    first, rest = measurement_order(rows, dtypes)
    for stage in (first, rest):
        for name, dtype in stage:
            # A row of the rest starts only with the time the slowest finished row took: one stopped
            # half way would only waste the budget.
            took = [r["process_s"] for r in report["jax"] if "median_s" in r]
            result = run(f"jax {name} {dtype}", ["--child", "row", "--row", name, "--dtypes", dtype] + common,
                         args.row_timeout, needs=max(took) if took and stage is not first else 0.0)
            result.setdefault("row", name)
            result.setdefault("dtype", dtype)
            if specs[name].kind == "sizes" and "rows" in result:
                result["sizes"] = result.pop("rows")  # the sizes it finished before it was stopped
            report["jax"].append(result)
            _write_json(args.json, report)
        # The peer of each row that JAX started (a PyTorch figure without its JAX one would only
        # spend the budget) and that has a peer (compilation has none: PyTorch runs eagerly).
        started = {(r["row"], r["dtype"]) for r in report["jax"] if r.get("error") != "skipped"}
        stage = [(name, dtype) for name, dtype in stage if (name, dtype) in started and specs[name].kind != "sizes"]
        if not torch_version or not stage:
            continue
        pairs = ",".join(f"{name}:{dtype}" for name, dtype in stage)
        out = run(f"torch rows {pairs}", ["--child", "torch", "--pairs", pairs] + common, args.row_timeout * len(stage))
        done = {(r["row"], r["dtype"]): r for r in out.get("rows", [])}
        for name, dtype in stage:  # a row the process did not finish gets the process's error
            report["torch"]["rows"].append(done.get((name, dtype)) or {
                "row": name, "dtype": dtype, "error": out.get("error", "missing"), "detail": out.get("detail", "")})
        report["torch"].update({k: out[k] for k in ("device", "threads") if k in out})
        _write_json(args.json, report)
    if torch_version:  # on the CPU, so it says nothing about the device: after every timing
        report["torch_check"] = run(f"torch {torch_version}: equivalence check (CPU)", ["--child", "torch_check"]
                                    + common, args.row_timeout, env={"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""})
        _write_json(args.json, report)

    if not args.no_loader:
        report["loaders"] = run("data loaders", ["--child", "loaders", "--loader_seconds", str(args.loader_seconds)]
                                + common, args.row_timeout, env={"JAX_PLATFORMS": "cpu"})

    torch_rows = {(r["row"], r["dtype"]): r for r in report["torch"]["rows"]} if report["torch"] else {}
    for result in sorted(report["jax"], key=lambda r: (ROWS.index(r["row"]), DTYPES.index(r["dtype"]))):
        torch_row = torch_rows.get((result["row"], result["dtype"])) if report["torch"] else None
        report["summary"].append(summarize_row(result, torch_row, peak, specs[result["row"]]))
    _write_json(args.json, report)

    # The one table, and what goes with it.
    device = report.get("device") or f"unknown ({peak.get('error')})"
    print(f"\nManTra-Net on {device}; jax {report['versions'].get('jax', '?')}"
          + (f", torch {torch_version}" if torch_version else ", torch n/a")
          + f"; {report['date']}" + SHAPE_NOTES[args.shapes])
    if "dtypes" in peak:
        print("measured peak: " + ", ".join(f"{d} {v['tflops_per_s']:.3g} TFLOP/s" for d, v in peak["dtypes"].items())
              + f" ({peak['n']}^3 matrix product)")
    print(format_table(report["summary"]))
    print("shape: batch x height x width; samples/s: images/s for the infer rows; "
          "jax/torch: torch ms / JAX ms (>= 1: JAX at least as fast)")
    for line in format_sizes(report["summary"]):
        print(line)
    for result in report["jax"]:
        if "error" in result:
            print(f"  {result['row']} {result['dtype']}: {result['error']}: {result.get('detail', '')}")
    check = report.get("torch_check")
    if check is not None:
        if "error" in check:
            print(f"torch peer check failed to run: {check['error']}: {check.get('detail', '')}")
        else:
            worst = max(check["max_abs_diff"].values())
            print(f"torch peer check: {'ok' if check['ok'] else 'FAILED'} (parameter counts "
                  + ", ".join(f"{k} {v['torch'][0]:,}/{v['jax'][0]:,}" for k, v in check["counts"].items())
                  + f" torch/jax; max |logit difference| {worst:.2e} with our parameters)")
    loaders = report.get("loaders")
    if loaders is not None:
        if "error" in loaders:
            print(f"loaders: {loaders['error']}: {loaders.get('detail', '')}")
        else:
            for key, row in (("imc", "imc_train"), ("e2e", "e2e_train")):
                steps = [s for s in report["summary"] if s["row"] == row and s.get("per_s")]
                line = (f"loader {key} ({loaders[key]['shape']}, {loaders['workers']} workers): "
                        f"{loaders[key]['samples_per_s']:.4g} samples/s")
                if steps:
                    fastest = max(steps, key=lambda s: s["per_s"])
                    ratio = loaders[key]["samples_per_s"] / fastest["per_s"]
                    loaders[key]["step_samples_per_s"] = fastest["per_s"]
                    loaders[key]["ratio"] = ratio
                    line += (f" against {fastest['per_s']:.4g} consumed by {row} {fastest['dtype']}: {ratio:.2f}x, "
                             + ("the loader keeps up" if ratio >= 1 else "the LOADER is the bottleneck"))
                print(line)
            _write_json(args.json, report)
    if args.json:
        print(f"full numbers: {args.json}")
    return 0


def child(args) -> int:
    """One measurement in this process; prints one RESULT line of JSON."""
    specs = row_specs(args.shapes)
    if args.child == "peak":
        import jax

        result = measure_peak(args.dtypes.split(","))
        result["versions"] = {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None)}
        try:
            import jaxlib

            result["versions"]["jaxlib"] = jaxlib.__version__
        except (ImportError, AttributeError):
            pass
        result["default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    elif args.child == "row":
        spec = specs[args.row]
        result = measure_jax_row(spec, args.dtypes, args.shapes, spec.repeats or args.repeats)
    elif args.child == "torch_check":
        from benchmarks import torch_peer

        result = torch_peer.check_torch_peer()
    elif args.child == "torch":
        from benchmarks import torch_peer
        from mantra_jax.train import loop

        rows = [(specs[name], model_config(specs[name].kind, args.shapes), dtype)
                for name, dtype in (pair.split(":") for pair in args.pairs.split(","))]
        result = torch_peer.measure_torch_rows(rows, args.repeats, loop.LoopConfig.grad_clip_norm)
    elif args.child == "loaders":
        result = measure_loaders(args.shapes, args.loader_seconds)
    else:
        raise SystemExit(f"unknown child {args.child!r}")
    harness.emit(result)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes = parser.add_mutually_exclusive_group()
    shapes.add_argument("--quick", action="store_true", help="a 1/8-width network on small inputs (CPU smoke run)")
    shapes.add_argument("--cpu_shapes", action="store_true",
                        help="the full-width network on CPU-sized inputs, 3 timed calls after one warm-up")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--rows", default=None, help=f"comma-separated subset of {','.join(ROWS)} "
                        "(default: every row of the shape set)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row (infer_large and --cpu_shapes: 3)")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--no_loader", action="store_true", help="skip the data-loader measurement")
    parser.add_argument("--loader_seconds", type=float, default=None,
                        help="timed seconds per loader (default 10, --quick 3)")
    parser.add_argument("--row_timeout", type=float, default=900, help="seconds allowed to each measuring process")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="seconds for the whole run: no measuring process starts after them, and each is "
                             "stopped at their end (the headline pairs are measured first)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: peak|row|torch|...
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", default=None, help=argparse.SUPPRESS)  # the torch child's row:dtype,...
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.budget_s is not None and not args.budget_s > 0:
        raise SystemExit("--budget_s must be > 0")
    args.shapes = "quick" if args.quick else "cpu" if args.cpu_shapes else "full"
    if args.loader_seconds is None:
        args.loader_seconds = 3.0 if args.quick else 10.0
    if args.child:
        return child(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
