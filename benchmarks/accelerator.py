"""ManTra-Net on an accelerator: step times, FLOP rate against the measured peak, memory, and a
PyTorch peer of the same network, in float32 and bfloat16, on whatever device JAX finds.

    python -m benchmarks.accelerator [--quick] [--json PATH] [--rows ROW,...] [--dtypes D,...]
                                     [--repeats 10] [--no_torch] [--no_loader] [--budget_s S]
    (from the repository root; on an H100 or H200:
     python -m benchmarks.accelerator --json $OUT/accelerator.json)

Rows (full sizes; --quick: a 1/8-width network on small inputs, for a smoke run on a CPU):
  imc_train    the IMC train step, 64 x 128 x 128 patches, 380 classes      (quick: 4 x 32 x 32)
  e2e_train    the end-to-end train step, 16 x 256 x 256 patches             (quick: 2 x 64 x 64)
  infer        inference of one 1024 x 768 image (whole-image pass)           (quick: 128 x 96)
  infer_large  inference of one 4000 x 3000 image (tiled automatically, 512)  (quick: 400 x 300,
                                                                               tiles of 128)
A train step is what the trainer runs (mantra_jax/train/loop.py): forward in training mode, the
loss (IMC: cross-entropy of the pooled class logits; end to end: pixel-wise binary cross-entropy
from the logits), the gradient, Adam, and the constraint projection, jitted with the state donated
over a ("data",) mesh of one device. Inference is `mantra_jax.predict.Predictor.predict` on a uint8
image, host to host (transfer, tiling and the image-wide moments included).

For each row and dtype ("float32" / "bfloat16": the convolutions' computation dtype; parameters and
the anomaly statistics stay float32), in its own subprocess so that one row's memory peak cannot
hide another's:
  ms/step     median wall time of --repeats calls (3 for infer_large) after 2 warm-up calls, each
              call synchronised (jax.block_until_ready, or the host copy of the prediction);
  samples/s   batch / median (images/s for inference);
  TFLOP/s     FLOPs / median, the FLOPs from XLA's cost analysis of the program as lowered
              (`jit(f).lower(...).cost_analysis()["flops"]`: before XLA's optimisations, so not
              shaped by one backend's fusion decisions; backward, Adam and the projection included for the train
              steps; the JSON also holds the compiled program's count, "flops_compiled"). For
              inference the count is that of the whole-image program at the image's size (traced,
              never compiled or run), i.e. the useful work: the tiles' halo overhead of a tiled
              row shows as a lower rate;
  % peak      TFLOP/s / the peak of that dtype measured in the same run by a large matrix product
              (16384^3 on an accelerator, 1024^3 on a CPU) timed the same way;
  peak GB     accelerator: `device.memory_stats()["peak_bytes_in_use"]` of the row's process
              (parameters, optimiser state and data included); CPU: the growth of the process's
              peak RSS over the timed calls (approximate). The JSON also holds XLA's compiled
              memory analysis (temporaries + arguments + outputs - aliased) of the train steps.
  torch ms    the same network written in PyTorch (below) on the same device, timed the same way
              (forward+backward+Adam for train rows, forward for inference, under
              torch.autocast(bfloat16) for bfloat16 rows, channels_last, cudnn.benchmark; on a
              CPU with denormals flushed, see measure_torch_rows);
              "n/a" when `import torch` fails, "OOM" when it ran out of memory;
  jax/torch   torch ms / JAX ms: at least 1 means JAX is at least as fast.
After the table: the data loaders' samples/s with one grain worker per usable core (the IMC stream at
the imc_train shape, the forgery stream at the e2e_train shape, on the bundled photos) against
what the faster train step consumes, and the issue's targets (meant for an H100) as PASS / FAIL.

The PyTorch peer is an optional dependency of this benchmark only (not in requirements.txt):
`pip install torch`. It is the same architecture, shapes and FLOPs, not our weights: symmetric
padding by concatenated flipped slices, the window means by separable prefix sums (the JAX code
reads one integral image), the hand-written ConvLSTM with hard sigmoid, the IMC head and the LADN
statistics in float32 and the ConvLSTM's gates and states in float32, as in JAX. Before the
timings a check (on the CPU, in its own process) copies the JAX parameters of a small
configuration into it and compares the outputs, and compares its parameter counts with ours for
the released configurations; the table says when that check fails. On a GPU
the float32 rows use each framework's default precision, which may use TF32 (JAX: XLA's default;
PyTorch: cudnn.allow_tf32, and matmul precision "high"); the JSON records JAX's setting.

Order: the peak products, then the pairs the targets need (imc_train and infer in bfloat16: JAX,
then the PyTorch peer), then the other requested rows (bfloat16 before float32: JAX, then
PyTorch), then the PyTorch peer's equivalence check (on the CPU), then the loaders. --budget_s S bounds the whole run: no
measuring process starts once S seconds are spent (it is reported as "skipped"), and each one is
stopped at the end of them ("timeout"; the PyTorch process keeps the rows it finished); a JAX row
after the target pairs starts only with at least the time the slowest finished row took.

--json PATH writes everything (each row's times, FLOPs, memory, the peak matmul rates, the torch
figures and check, the loaders, the device, jax/torch versions, the date); it is rewritten after
every row, so an interrupted run keeps what it measured. A row that fails (e.g. runs out of memory)
is reported as such and the run goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROWS = ("imc_train", "e2e_train", "infer", "infer_large")
DTYPES = ("float32", "bfloat16")
WARMUP_CALLS = 2
QUICK_WIDTH_SCALE = 0.125

# The targets (H100).
TARGET_INFER_MS_BF16 = 20.0
TARGET_IMC_PEAK_SHARE_BF16 = 0.40
# The (row, dtype) pairs those targets need, measured first (JAX, then the PyTorch peer).
TARGET_PAIRS = (("imc_train", "bfloat16"), ("infer", "bfloat16"))
# With --budget_s: no measuring process starts with less than this many seconds left.
MIN_START_S = 5.0


def measurement_order(rows, dtypes) -> tuple[list, list]:
    """(first, rest): the requested (row, dtype) pairs that the targets need (TARGET_PAIRS), then
    the others, bfloat16 before float32, each in ROWS order."""
    pairs = [(row, dtype) for row in rows for dtype in dtypes]
    first = [pair for pair in TARGET_PAIRS if pair in pairs]
    rest = sorted((pair for pair in pairs if pair not in first),
                  key=lambda pair: (pair[1] != "bfloat16", ROWS.index(pair[0]), DTYPES.index(pair[1])))
    return first, rest


@dataclasses.dataclass(frozen=True)
class RowSpec:
    name: str
    kind: str  # "imc", "e2e" (train steps) or "infer"
    batch: int
    height: int
    width: int
    repeats: Optional[int] = None  # None: --repeats
    tile: Optional[int] = None  # inference: None tiles only above the Predictor's threshold

    @property
    def shape(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"


def row_specs(quick: bool) -> dict[str, RowSpec]:
    if quick:
        specs = (RowSpec("imc_train", "imc", 4, 32, 32), RowSpec("e2e_train", "e2e", 2, 64, 64),
                 RowSpec("infer", "infer", 1, 96, 128),
                 RowSpec("infer_large", "infer", 1, 300, 400, repeats=3, tile=128))
    else:
        specs = (RowSpec("imc_train", "imc", 64, 128, 128), RowSpec("e2e_train", "e2e", 16, 256, 256),
                 RowSpec("infer", "infer", 1, 768, 1024),
                 RowSpec("infer_large", "infer", 1, 3000, 4000, repeats=3))
    return {s.name: s for s in specs}


def model_config(kind: str, quick: bool):
    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config

    scale = QUICK_WIDTH_SCALE if quick else 1.0
    if kind == "imc":
        return config.make_config(head="imc", num_classes=taxonomy.num_classes(taxonomy.LEAF_LEVEL),
                                  width_scale=scale)
    return config.make_config(width_scale=scale) if quick else config.released()


# --------------------------------------------------------------------------------------------
# Small helpers shared by the measuring processes
# --------------------------------------------------------------------------------------------
def _flops(program) -> Optional[float]:
    """XLA's FLOP count of a lowered or compiled program. `cost_analysis()` is a dict in recent JAX
    and was a list of one dict per program before."""
    cost = program.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def _xla_bytes(compiled) -> Optional[int]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _time_calls(call, count: int, warmup: int = WARMUP_CALLS) -> list[float]:
    """Seconds of each of `count` calls after `warmup` untimed ones; `call` must synchronise."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _median(values) -> float:
    import numpy as np

    return float(np.median(values))


def benchmark_variables(cfg, seed: int = 0) -> dict:
    """Random variables of `model.init`'s shapes, drawn with numpy: kernels ~ N(0, 1 / fan_in),
    biases and batch-norm means 0, variances 1, min_std 1e-5. Speed does not depend on the values,
    and `model.init` compiles one small program per operation, which on a CPU costs far more
    than the measurements themselves."""
    import jax
    import numpy as np

    from mantra_jax.nn import model

    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "moving_variance" in name:
            return np.ones(leaf.shape, leaf.dtype)
        if "min_std" in name:
            return np.full(leaf.shape, 1e-5, leaf.dtype)
        if len(leaf.shape) == 4:
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:3]))).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _usable_cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _device_description(device) -> str:
    return f"{device.platform}:{device.device_kind}"


# --------------------------------------------------------------------------------------------
# JAX measurements (one per subprocess)
# --------------------------------------------------------------------------------------------
def measure_peak(quick: bool, dtypes) -> dict:
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
        times = _time_calls(lambda: jax.block_until_ready(compiled(a, b)), repeats, warmup=3)
        flops = 2.0 * n**3
        out["dtypes"][name] = {"flops": flops, "median_s": _median(times), "times_s": times,
                               "xla_flops": _flops(compiled), "tflops_per_s": flops / _median(times) / 1e12}
    return out


def train_step_function(spec: RowSpec, cfg, dtype):
    """(step, optimizer): the trainer's step for a row, built from the same pieces; step(state,
    batch) -> (state, loss) with state {"params", "batch_stats", "opt_state"} and batch {"image"
    uint8, "label" int32 | "mask" uint8}."""
    import jax
    import jax.numpy as jnp
    import optax

    from mantra_jax.nn import model

    optimizer = optax.adam(1e-4)

    def loss_fn(params, batch_stats, batch):
        out = model.apply({"params": params, "batch_stats": batch_stats}, model.preprocess(batch["image"]), cfg,
                          train=True, dtype=dtype, pooled=spec.kind == "imc")
        if spec.kind == "imc":
            loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["label"])
        else:
            loss = optax.sigmoid_binary_cross_entropy(out["logits"], batch["mask"].astype(jnp.float32))
        return jnp.mean(loss), out["batch_stats"]

    def step(state, batch):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["batch_stats"], batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = model.project(optax.apply_updates(state["params"], updates), cfg)
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, loss

    return step, optimizer


def _train_step_program(spec: RowSpec, cfg, dtype):
    """(lowered step, state, batch): the step jitted as the trainer does, on real arrays."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from mantra_jax.train import loop

    mesh = loop.make_mesh(1)  # one chip: the figures are per device
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step, optimizer = train_step_function(spec, cfg, dtype)
    variables = jax.device_put(benchmark_variables(cfg), replicated)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": jax.jit(optimizer.init, out_shardings=replicated)(variables["params"])}
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (spec.batch, spec.height, spec.width, 3), dtype=np.uint8)}
    if spec.kind == "imc":
        batch["label"] = rng.integers(0, cfg.num_classes, spec.batch).astype(np.int32)
    else:
        batch["mask"] = (rng.random((spec.batch, spec.height, spec.width)) < 0.3).astype(np.uint8)
    batch = jax.device_put(batch, split)
    jitted = jax.jit(step, in_shardings=(replicated, split), out_shardings=(replicated, replicated),
                     donate_argnums=0)
    return jitted.lower(state, batch), state, batch


def measure_jax_row(spec: RowSpec, dtype_name: str, quick: bool, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mantra_jax.nn import tiled

    device = jax.devices()[0]
    dtype = jnp.dtype(dtype_name)
    cfg = model_config(spec.kind, quick)
    result = {"row": spec.name, "dtype": dtype_name, "shape": spec.shape, "batch": spec.batch,
              "device": _device_description(device), "repeats": repeats}

    if spec.kind in ("imc", "e2e"):
        start = time.perf_counter()
        lowered, state, batch = _train_step_program(spec, cfg, dtype)
        compiled = lowered.compile()
        result["compile_s"] = time.perf_counter() - start
        result["flops"] = _flops(lowered)
        result["flops_compiled"] = _flops(compiled)
        result["xla_bytes"] = _xla_bytes(compiled)
        holder = {"state": state}

        def call():
            holder["state"], loss = compiled(holder["state"], batch)  # the state is donated
            jax.block_until_ready((holder["state"], loss))
            holder["loss"] = loss
    else:
        from mantra_jax.predict import Predictor

        predictor = Predictor(cfg, benchmark_variables(cfg), dtype=dtype_name, tile=spec.tile)
        rgb = np.random.default_rng(0).integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)

        def call():
            predictor.predict(rgb)  # a numpy array: the device work is done

    rss_before = _rss_bytes()
    if "compile_s" not in result:
        start = time.perf_counter()
        call()  # compiles (and is one more warm-up call)
        result["compile_s"] = time.perf_counter() - start
    times = _time_calls(call, repeats)
    if spec.kind in ("imc", "e2e"):
        result["final_loss"] = float(holder["loss"])
    result["times_s"] = times
    result["median_s"] = _median(times)
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        result["peak_bytes"], result["peak_kind"] = int(stats["peak_bytes_in_use"]), "peak_bytes_in_use"
    elif rss_before is not None:
        result["peak_bytes"], result["peak_kind"] = max(0, _peak_rss_bytes() - rss_before), "peak RSS growth"

    if spec.kind == "infer":
        # After the first call, which compiled the whole-image program (and asked XLA what it needs).
        result["tiled"] = predictor.is_tiled(spec.height, spec.width)
        # The useful work: the whole-image program, lowered (traced) but never compiled or run, so
        # that a tiled row counts no halo and the count costs no memory at any size.
        image = jax.ShapeDtypeStruct((spec.height, spec.width, 3), jnp.uint8)
        result["flops"] = _flops(tiled.whole_image_map.lower(predictor.variables, image, cfg, dtype))
    return result


# --------------------------------------------------------------------------------------------
# The data loaders (one subprocess, CPU only)
# --------------------------------------------------------------------------------------------
def _stream_rate(dataset, batch_size: int, seconds: float, skip: int) -> float:
    iterator = iter(dataset)
    for _ in range(skip):  # worker start-up and first decodes, not timed
        next(iterator)
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        batches += 1
    rate = batches * batch_size / (time.perf_counter() - start)
    if hasattr(iterator, "close"):
        iterator.close()
    return rate


def measure_loaders(quick: bool, seconds: float) -> dict:
    import cv2

    from mantra_jax.data import bundled, forgery_pipeline, imc_pipeline, photos

    cv2.setNumThreads(1)
    specs = row_specs(quick)
    workers = _usable_cores()
    out = {"workers": workers, "seconds": seconds}
    with tempfile.TemporaryDirectory() as tmp:
        folder = bundled.default_photo_dir(cache_dir=tmp)
        index = photos.build_patch_index(folder, cache_dir=os.path.join(tmp, "index"))
        imc, e2e = specs["imc_train"], specs["e2e_train"]
        skip = max(2, workers)
        dataset = imc_pipeline.make_train_dataset(index, seed=0, batch_size=imc.batch, crop=imc.height,
                                                  worker_count=workers, prefetch_buffer=4)
        out["imc"] = {"shape": imc.shape, "samples_per_s": _stream_rate(dataset, imc.batch, seconds, skip)}
        dataset = forgery_pipeline.make_train_dataset(index, seed=0, batch_size=e2e.batch, patch_size=e2e.height,
                                                      worker_count=workers, prefetch_buffer=4)
        out["e2e"] = {"shape": e2e.shape, "samples_per_s": _stream_rate(dataset, e2e.batch, seconds, skip)}
    return out


# --------------------------------------------------------------------------------------------
# The PyTorch peer
# --------------------------------------------------------------------------------------------
def torch_network(cfg):
    """The same network in PyTorch (NCHW tensors, OIHW kernels), from a ModelConfig."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mantra_jax.nn import featex, layers

    if cfg.anomaly != "tac" or not cfg.use_global or cfg.first_kernel != 5:
        raise ValueError("the PyTorch peer covers the released LADN (anomaly 'tac', global window, 5x5 b1c1)")

    def symmetric_pad(x, r):
        """numpy 'symmetric' padding (the edge pixel repeated in the mirror): not a torch pad mode."""
        if r == 0:
            return x
        x = torch.cat([x[:, :, :r].flip(2), x, x[:, :, -r:].flip(2)], dim=2)
        return torch.cat([x[:, :, :, :r].flip(3), x, x[:, :, :, -r:].flip(3)], dim=3)

    def box_mean(x, k):
        """Centred k x k mean over in-image pixels, by separable prefix sums."""
        r, s, counts = k // 2, x, []
        for dim in (2, 3):
            n = s.shape[dim]
            i = torch.arange(n, device=x.device)
            lo, hi = (i - r).clamp(min=0), (i + r).clamp(max=n - 1) + 1
            c = torch.cumsum(s, dim=dim)
            c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
            s = c.index_select(dim, hi) - c.index_select(dim, lo)
            counts.append((hi - lo).to(x.dtype))
        return s / (counts[0][:, None] * counts[1][None, :])

    def hard_sigmoid(x):
        return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)

    def glorot(*shape_oihw):
        w = torch.empty(*shape_oihw)
        nn.init.xavier_uniform_(w)
        return nn.Parameter(w)

    class ManTraNetTorch(nn.Module):
        def __init__(self):
            super().__init__()
            k = cfg.first_kernel
            self.regular = glorot(cfg.regular_filters, 3, k, k) if cfg.regular_filters else None
            self.register_buffer("srm", torch.from_numpy(layers.srm_kernels().transpose(3, 2, 0, 1).copy())
                                 if cfg.srm else torch.zeros(0, 3, k, k))
            self.bayar = nn.Parameter(torch.rand(cfg.bayar_filters, 3, k, k)) if cfg.bayar_filters else None
            self.layer_names = featex.layer_names(cfg)
            self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3) for _, c_in, c_out in self.layer_names)
            for conv in self.convs:
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)
            if cfg.head == "imc":
                self.imc_kernel = glorot(cfg.num_classes, cfg.feature_dim, 3, 3)
                self.imc_bias = nn.Parameter(torch.zeros(cfg.num_classes))
            else:
                f, kl, a = cfg.lstm_filters, cfg.lstm_kernel, cfg.adapt_dim
                self.outlier = glorot(a, cfg.feature_dim, 1, 1)
                self.min_std = nn.Parameter(torch.full((a,), 1e-5))
                self.register_buffer("moving_mean", torch.zeros(a))
                self.register_buffer("moving_variance", torch.ones(a))
                self.lstm_in = nn.Conv2d(a, 4 * f, kl, padding=kl // 2)
                self.lstm_rec = nn.Conv2d(f, 4 * f, kl, padding=kl // 2, bias=False)
                self.pred = nn.Conv2d(f, 1, cfg.pred_kernel, padding=cfg.pred_kernel // 2)
                with torch.no_grad():
                    self.lstm_in.bias.zero_()
                    self.lstm_in.bias[f:2 * f] = 1.0  # unit forget bias
            self.project()

        @torch.no_grad()
        def project(self):
            """The constraints after each update, as model.project."""
            if self.bayar is not None:
                c = self.bayar.shape[-1] // 2
                off = self.bayar.clone()
                off[:, :, c, c] = 0
                off = off / (off.sum(dim=(2, 3), keepdim=True) + 1e-7)
                off[:, :, c, c] = -1
                self.bayar.copy_(off)
            if cfg.head != "imc":
                w = self.outlier
                w.copy_(w / (1e-7 + w.square().sum(dim=(1, 2, 3), keepdim=True).sqrt()))
                self.min_std.clamp_(min=0.0)

        def featex(self, x):
            parts = [p for p in (self.regular, self.srm, self.bayar) if p is not None and p.shape[0]]
            x = F.relu(F.conv2d(symmetric_pad(x, cfg.first_kernel // 2), torch.cat(parts, dim=0)))
            for (name, c_in, c_out), conv in zip(self.layer_names, self.convs):
                y = conv(symmetric_pad(x, 1))
                if name == "transform":
                    x = torch.tanh(y) if cfg.transform_activation == "tanh" else y
                else:
                    y = F.relu(y)
                    x = x + y if (cfg.residual and c_in == c_out) else y
            sq = x.float().square().sum(dim=1, keepdim=True)
            return x * torch.rsqrt(sq.clamp(min=1e-12)).to(x.dtype)

        def forward(self, x, train: bool = False):
            """[-1, 1] NCHW -> logits: (N, classes) pooled for the IMC head, (N, H, W) otherwise."""
            feat = self.featex(x)
            device_type = x.device.type
            if cfg.head == "imc":
                with torch.autocast(device_type, enabled=False):  # float32, as in JAX
                    padded = symmetric_pad(feat.float(), 1)
                    h, w = feat.shape[2:]
                    logits = self.imc_bias
                    for dy in range(3):
                        for dx in range(3):
                            shifted_mean = padded[:, :, dy:dy + h, dx:dx + w].mean(dim=(2, 3))
                            logits = logits + shifted_mean @ self.imc_kernel[:, :, dy, dx].t()
                    return logits
            y = F.conv2d(feat, self.outlier)
            with torch.autocast(device_type, enabled=False):  # the LADN statistics are float32 in JAX
                y = y.float()
                if train:
                    mean = y.mean(dim=(0, 2, 3))
                    var = (y - mean[:, None, None]).square().mean(dim=(0, 2, 3))
                    with torch.no_grad():
                        m = cfg.bn_momentum
                        self.moving_mean.mul_(m).add_((1 - m) * mean)
                        self.moving_variance.mul_(m).add_((1 - m) * var)
                else:
                    mean, var = self.moving_mean, self.moving_variance
                y = (y - mean[:, None, None]) * torch.rsqrt(var[:, None, None] + cfg.bn_epsilon)
                g_mean = y.mean(dim=(2, 3), keepdim=True)
                g_std = (y - g_mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
                sigma = torch.maximum(g_std, 1e-6 + self.min_std[None, :, None, None])
                devs = [box_mean(y, k) - y for k in cfg.windows] + [g_mean - y]
                z = (torch.stack(devs, dim=1) / sigma[:, None]).abs()  # (N, T, C, H, W)
            # As in JAX: the ConvLSTM and prediction convolutions in the computation dtype (autocast's
            # in the bfloat16 rows), the gates and states in float32.
            n, t, c, h, w = z.shape
            f = cfg.lstm_filters
            xz = self.lstm_in(z.reshape(n * t, c, h, w)).float().reshape(n, t, 4 * f, h, w)
            hidden = cell = torch.zeros_like(xz[:, 0, :f])
            for step in range(t):
                gates = xz[:, step] + self.lstm_rec(hidden).float()
                z_i, z_f, z_c, z_o = gates.chunk(4, dim=1)
                cell = hard_sigmoid(z_f) * cell + hard_sigmoid(z_i) * torch.tanh(z_c)
                hidden = hard_sigmoid(z_o) * torch.tanh(cell)
            return self.pred(hidden)[:, 0].float()

    return ManTraNetTorch()


def torch_counts(net) -> tuple[int, int]:
    """(total, trainable) as model.count_params: parameters plus the batch-norm statistics."""
    trainable = sum(p.numel() for p in net.parameters())
    stats = sum(b.numel() for name, b in net.named_buffers() if name.startswith("moving_"))
    return trainable + stats, trainable


def load_jax_variables(net, variables, cfg):
    """Copies JAX variables (HWIO kernels) into the PyTorch peer (OIHW), for the equivalence check."""
    import numpy as np
    import torch

    def oihw(a):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(3, 2, 0, 1)))

    def vec(a):
        return torch.from_numpy(np.asarray(a, np.float32).copy())

    p = variables["params"]
    with torch.no_grad():
        if net.regular is not None:
            net.regular.copy_(oihw(p["Featex"]["b1c1"]["regular_kernel"]))
        if net.bayar is not None:
            net.bayar.copy_(oihw(p["Featex"]["b1c1"]["bayar_kernel"]))
        for (name, _, _), conv in zip(net.layer_names, net.convs):
            conv.weight.copy_(oihw(p["Featex"][name]["kernel"]))
            conv.bias.copy_(vec(p["Featex"][name]["bias"]))
        if cfg.head == "imc":
            net.imc_kernel.copy_(oihw(p["imc"]["kernel"]))
            net.imc_bias.copy_(vec(p["imc"]["bias"]))
            return
        net.outlier.copy_(oihw(p["outlierTrans"]["kernel"]))
        net.min_std.copy_(vec(p["glbStd"]["min_std"]))
        net.lstm_in.weight.copy_(oihw(p["cLSTM"]["kernel"]))
        net.lstm_in.bias.copy_(vec(p["cLSTM"]["bias"]))
        net.lstm_rec.weight.copy_(oihw(p["cLSTM"]["recurrent_kernel"]))
        net.pred.weight.copy_(oihw(p["pred"]["kernel"]))
        net.pred.bias.copy_(vec(p["pred"]["bias"]))
        net.moving_mean.copy_(vec(variables["batch_stats"]["bnorm"]["moving_mean"]))
        net.moving_variance.copy_(vec(variables["batch_stats"]["bnorm"]["moving_variance"]))


def check_torch_peer() -> dict:
    """On the CPU: parameter counts against ours for the released configurations, and the outputs
    of a small configuration with our parameters copied in, against JAX's (float32)."""
    import jax
    import numpy as np
    import torch

    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config, model

    out = {"counts": {}, "max_abs_diff": {}, "max_abs_logit": {}}
    leaf_classes = taxonomy.num_classes(taxonomy.LEAF_LEVEL)
    for name, cfg in (("released", config.released()),
                      ("imc", config.make_config(head="imc", num_classes=leaf_classes))):
        shapes = jax.eval_shape(lambda cfg=cfg: model.init(jax.random.key(0), cfg))
        out["counts"][name] = {"jax": list(model.count_params(shapes)), "torch": list(torch_counts(torch_network(cfg)))}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 40, 56, 3)).astype(np.float32)
    for name, cfg in (("ladn", config.make_config(width_scale=QUICK_WIDTH_SCALE)),
                      ("imc", config.make_config(head="imc", num_classes=leaf_classes, width_scale=QUICK_WIDTH_SCALE))):
        variables = benchmark_variables(cfg, seed=1)
        if cfg.head != "imc":  # non-trivial batch-norm statistics, so that inference mode is checked too
            variables["batch_stats"] = {"bnorm": {"moving_mean": rng.normal(0, 0.1, cfg.adapt_dim).astype(np.float32),
                                                  "moving_variance": rng.uniform(0.5, 2, cfg.adapt_dim).astype(np.float32)}}
        net = torch_network(cfg)
        load_jax_variables(net, variables, cfg)
        x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        apply = jax.jit(model.apply, static_argnames=("cfg", "train", "pooled"))
        for train in (False, True):
            expected = apply(variables, x, cfg=cfg, train=train, pooled=cfg.head == "imc")["logits"]
            with torch.no_grad():
                got = net(x_torch, train=train).numpy()
            key = f"{name}_{'train' if train else 'inference'}"
            out["max_abs_diff"][key] = float(np.max(np.abs(got - np.asarray(expected))))
            out["max_abs_logit"][key] = float(np.max(np.abs(np.asarray(expected))))
    counts_ok = all(v["jax"] == v["torch"] for v in out["counts"].values())
    out["ok"] = bool(counts_ok and max(out["max_abs_diff"].values()) < 1e-3)
    return out


def measure_torch_rows(pairs, quick: bool, repeats: int) -> dict:
    """The PyTorch peer's (RowSpec, dtype) pairs in order, in this one process (peak memory is reset
    between rows). Each finished row is also printed as a PARTIAL line, so that a process stopped
    by its timeout keeps the rows it measured."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    else:
        # Without this, some random initialisations make PyTorch's CPU kernels meet denormals and
        # run 20-60x slower (seen with the --quick network); the JAX rows show no such effect.
        torch.set_flush_denormal(True)
    out = {"version": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
           "threads": torch.get_num_threads(), "rows": []}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run_row(spec: RowSpec, dtype_name: str) -> dict:
        """Everything one row allocates is local here, so it is freed before the next row."""
        torch.manual_seed(0)
        cfg = model_config(spec.kind, quick)
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bfloat16")
        rng = np.random.default_rng(0)
        net = torch_network(cfg).to(device=device, memory_format=torch.channels_last)
        images = torch.from_numpy(rng.integers(0, 256, (spec.batch, spec.height, spec.width, 3), dtype=np.uint8))
        if spec.kind in ("imc", "e2e"):
            images = images.to(device)
            if spec.kind == "imc":
                target = torch.from_numpy(rng.integers(0, cfg.num_classes, spec.batch)).to(device)
            else:
                target = torch.from_numpy((rng.random((spec.batch, spec.height, spec.width)) < 0.3)
                                          .astype(np.float32)).to(device)
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, **({"fused": True} if cuda else {}))

            def call():
                optimizer.zero_grad(set_to_none=True)
                x = (images.permute(0, 3, 1, 2).float() * (2 / 255) - 1).contiguous(memory_format=torch.channels_last)
                with autocast():
                    logits = net(x, train=True)
                if spec.kind == "imc":
                    loss = F.cross_entropy(logits.float(), target)
                else:
                    loss = F.binary_cross_entropy_with_logits(logits.float(), target)
                loss.backward()
                optimizer.step()
                net.project()
                sync()
        else:
            net.eval()
            rgb = images[0].numpy()

            def call():
                with torch.inference_mode(), autocast():
                    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() * (2 / 255) - 1
                    prob = torch.sigmoid(net(x.contiguous(memory_format=torch.channels_last)).float())[0]
                    prob.cpu().numpy()  # host to host, as Predictor.predict

        times = _time_calls(call, spec.repeats or repeats)
        result = {"times_s": times, "median_s": _median(times)}
        if cuda:
            result["peak_bytes"] = int(torch.cuda.max_memory_allocated())
        return result

    for spec, dtype_name in pairs:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = {"row": spec.name, "dtype": dtype_name}
        try:
            result.update(run_row(spec, dtype_name))
        except torch.cuda.OutOfMemoryError as error:
            result.update(error="OOM", detail=str(error).splitlines()[0])
        except RuntimeError as error:  # CPU allocation failures and the like
            text = str(error)
            result.update(error="OOM" if "memory" in text.lower() else "error",
                          detail=text.splitlines()[0] if text else type(error).__name__)
        out["rows"].append(result)
        print("PARTIAL " + json.dumps(result), flush=True)
        print(f"torch {spec.name} {dtype_name}: "
              + (f"{1e3 * result['median_s']:.2f} ms" if "median_s" in result else result["error"]),
              file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------------------------
# The orchestrating process (never imports JAX or torch: each measurement has its own process)
# --------------------------------------------------------------------------------------------
def _run_child(args: list[str], timeout: float, env: Optional[dict] = None) -> dict:
    """Runs one measurement in a fresh process; its RESULT, or {"error", "detail"}, plus "process_s"
    (the process's wall time, start-up and compilation included: what a device run has to budget)."""
    command = [sys.executable, "-m", "benchmarks.accelerator"] + args
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
        result = {"error": "timeout", "detail": f"no result within {timeout:.0f} s", "process_s": timeout}
        partial = _tagged(out or "", "PARTIAL ")
        return dict(result, rows=partial) if partial else result
    results = _tagged(done.stdout, "RESULT ")
    if done.returncode == 0 and results:
        return dict(results[-1], process_s=time.perf_counter() - start)
    text = (done.stderr or "") + (done.stdout or "")
    oom = any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemory"))
    tail = " | ".join(text.strip().splitlines()[-3:])
    result = {"error": "OOM" if oom else f"exit {done.returncode}", "detail": tail[-600:],
              "process_s": time.perf_counter() - start}
    partial = _tagged(done.stdout, "PARTIAL ")
    return dict(result, rows=partial) if partial else result


def _tagged(stdout: str, tag: str) -> list[dict]:
    """The JSON objects of a child's lines that start with `tag`."""
    return [json.loads(line[len(tag):]) for line in stdout.splitlines() if line.startswith(tag)]


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
        share = None if s.get("peak_share") is None else 100 * s["peak_share"]
        torch_ms = _fmt(s.get("torch_ms"), ".4g") if "torch_ms" in s else s.get("torch", "n/a")
        ms = _fmt(s.get("ms"), ".4g", missing=s.get("error", "-"))
        lines.append(f"{s['row']:<12} {s['dtype']:<9} {s['shape']:<13} {ms:>9} {_fmt(s.get('per_s'), '.4g'):>10} "
                     f"{_fmt(s.get('tflops_per_s'), '.3g'):>9} {_fmt(share, '.1f'):>7} "
                     f"{_fmt(s.get('peak_gb'), '.3g'):>8} {torch_ms:>9} {_fmt(s.get('speed_ratio'), '.2f'):>9}")
    return "\n".join(lines)


def check_targets(summaries: list[dict], torch_ran: bool) -> list[tuple[str, str]]:
    """The issue's targets, each PASS / FAIL / n/a (they are meant for an H100)."""
    by = {(s["row"], s["dtype"]): s for s in summaries}
    verdicts = []
    infer = by.get(("infer", "bfloat16"))
    if infer is None or infer.get("ms") is None:
        verdicts.append((f"infer bfloat16 <= {TARGET_INFER_MS_BF16:g} ms", "n/a"))
    else:
        ok = infer["ms"] <= TARGET_INFER_MS_BF16
        verdicts.append((f"infer bfloat16 <= {TARGET_INFER_MS_BF16:g} ms ({infer['ms']:.3g} ms)", "PASS" if ok else "FAIL"))
    imc = by.get(("imc_train", "bfloat16"))
    if imc is None or imc.get("peak_share") is None:
        verdicts.append((f"imc_train bfloat16 >= {TARGET_IMC_PEAK_SHARE_BF16:.0%} of peak", "n/a"))
    else:
        ok = imc["peak_share"] >= TARGET_IMC_PEAK_SHARE_BF16
        verdicts.append((f"imc_train bfloat16 >= {TARGET_IMC_PEAK_SHARE_BF16:.0%} of peak ({imc['peak_share']:.1%})",
                         "PASS" if ok else "FAIL"))
    ratios = [s for s in summaries if s.get("speed_ratio") is not None]
    if not torch_ran or not ratios:
        verdicts.append(("JAX at least as fast as PyTorch in every row", "n/a"))
    else:
        slower = [f"{s['row']}/{s['dtype']}" for s in ratios if s["speed_ratio"] < 1]
        compared = f"; {len(ratios)} of {len(summaries)} rows compared" if len(ratios) < len(summaries) else ""
        verdicts.append(("JAX at least as fast as PyTorch in every row"
                         + (f" (slower: {', '.join(slower)}{compared})" if slower else
                            f" ({compared[2:]})" if compared else ""), "FAIL" if slower else "PASS"))
    large = [s for s in summaries if s["row"] == "infer_large"]
    ooms = [s["dtype"] for s in large if s.get("error") == "OOM"]
    if ooms:
        verdicts.append((f"infer_large never runs out of memory (OOM: {', '.join(ooms)})", "FAIL"))
    elif any(s.get("ms") is not None for s in large):
        verdicts.append(("infer_large never runs out of memory", "PASS"))
    else:  # not requested, not started (budget) or failed otherwise
        verdicts.append(("infer_large never runs out of memory", "n/a"))
    return verdicts


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
    specs = row_specs(args.quick)
    rows = _parse_list(args.rows, ROWS, "--rows")
    dtypes = _parse_list(args.dtypes, DTYPES, "--dtypes")
    common = ["--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick, "host": {"cpus": _usable_cores(), "machine": platform.machine(),
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
        return _run_child(child_args, limit if left is None else min(limit, left), env)

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
            report["jax"].append(result)
            _write_json(args.json, report)
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
    report["targets"] = [{"target": t, "verdict": v} for t, v in check_targets(report["summary"], bool(report["torch"]))]
    _write_json(args.json, report)

    # The one table, and what goes with it.
    device = report.get("device") or f"unknown ({peak.get('error')})"
    print(f"\nManTra-Net on {device}; jax {report['versions'].get('jax', '?')}"
          + (f", torch {torch_version}" if torch_version else ", torch n/a")
          + f"; {report['date']}" + ("; --quick: 1/8-width network, small inputs" if args.quick else ""))
    if "dtypes" in peak:
        print("measured peak: " + ", ".join(f"{d} {v['tflops_per_s']:.3g} TFLOP/s" for d, v in peak["dtypes"].items())
              + f" ({peak['n']}^3 matrix product)")
    print(format_table(report["summary"]))
    print("shape: batch x height x width; samples/s: images/s for the infer rows; "
          "jax/torch: torch ms / JAX ms (>= 1: JAX at least as fast)")
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
    print("targets (H100):" + ("" if report["device"] and "cpu" not in str(report["device"]) else
                               " not meaningful on a CPU"))
    for target, verdict in check_targets(report["summary"], bool(report["torch"])):
        print(f"  {verdict:<4}  {target}")
    if args.json:
        print(f"full numbers: {args.json}")
    return 0


def child(args) -> int:
    """One measurement in this process; prints one RESULT line of JSON."""
    specs = row_specs(args.quick)
    if args.child == "peak":
        import jax

        result = measure_peak(args.quick, args.dtypes.split(","))
        result["versions"] = {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None)}
        try:
            import jaxlib

            result["versions"]["jaxlib"] = jaxlib.__version__
        except (ImportError, AttributeError):
            pass
        result["default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    elif args.child == "row":
        spec = specs[args.row]
        result = measure_jax_row(spec, args.dtypes, args.quick, spec.repeats or args.repeats)
    elif args.child == "torch_check":
        result = check_torch_peer()
    elif args.child == "torch":
        pairs = [(specs[name], dtype) for name, dtype in (pair.split(":") for pair in args.pairs.split(","))]
        result = measure_torch_rows(pairs, args.quick, args.repeats)
    elif args.child == "loaders":
        result = measure_loaders(args.quick, args.loader_seconds)
    else:
        raise SystemExit(f"unknown child {args.child!r}")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1/8-width network on small inputs (CPU smoke run)")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row (infer_large: 3)")
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--no_loader", action="store_true", help="skip the data-loader measurement")
    parser.add_argument("--loader_seconds", type=float, default=None,
                        help="timed seconds per loader (default 10, --quick 3)")
    parser.add_argument("--row_timeout", type=float, default=900, help="seconds allowed to each measuring process")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="seconds for the whole run: no measuring process starts after them, and each is "
                             "stopped at their end (the rows the targets need are measured first)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: peak|row|torch|...
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", default=None, help=argparse.SUPPRESS)  # the torch child's row:dtype,...
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.budget_s is not None and not args.budget_s > 0:
        raise SystemExit("--budget_s must be > 0")
    if args.loader_seconds is None:
        args.loader_seconds = 3.0 if args.quick else 10.0
    if args.child:
        return child(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
