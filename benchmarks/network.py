"""Speed, FLOP rate and memory of the full released ManTra-Net, forward and forward+backward.

    python -m benchmarks.network [--quick] [--dtype float32|bfloat16] [--repeats 3]
                                 [--sizes 4x256x256,1x768x1024] [--variant Ptrain4]
    (from the repository root)

For each N x H x W batch (default: 4 x 256 x 256, then one 1024 x 768 image) and each of
"forward" (inference) and "fwd+bwd" (training-mode forward, pixel-wise binary cross-entropy, and
the gradient with respect to every parameter), it prints:
  compile  seconds to compile (lowering included);
  time     seconds per call: one call when it takes over 2 s (no warm-up needed: compilation is
           done beforehand), else the median of --repeats calls after a warm-up;
  cpu      CPU seconds (user + system, all threads) per call: on a shared machine the ratio
           cpu / time shows how many cores the program actually got;
  GFLOP    XLA's cost analysis of the compiled program (`compiled.cost_analysis()["flops"]`),
           GFLOP/s = GFLOP / time, and GFLOP/cpu-s = GFLOP / cpu (CPU only);
  XLA MB   the compiled memory analysis: temporaries + arguments + outputs (- aliased);
  peak MB  on GPU `device.memory_stats()["peak_bytes_in_use"]`; on CPU the growth of the
           process's peak RSS (`getrusage`) over its RSS just before the first call.
Each measurement runs in its own process so that one's peak does not mask the next. A program
whose XLA memory exceeds what the machine has available is compiled and analysed but not run.
"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks import harness

DEFAULT_SIZES = "4x256x256,1x768x1024"
QUICK_SIZES = "2x64x64,1x96x128"
MODES = ("forward", "fwd+bwd")
SLOW_CALL_S = 2.0


def _parse_sizes(text):
    sizes = []
    for item in text.split(","):
        try:
            n, h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: expected NxHxW items such as 4x256x256, got {item!r}")
        sizes.append((n, h, w))
    return sizes


def measure(n, h, w, mode, *, variant, dtype_name, repeats):
    """One measurement in this process; returns a JSON-able dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mantra_jax.nn import config, model, tiled

    cfg = config.released(variant)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    device = jax.devices()[0]
    variables = model.init(jax.random.key(0), cfg)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32))
    mask = jnp.asarray((rng.random((n, h, w)) < 0.2).astype(np.float32))

    if mode == "forward":
        def run(v, x, mask):
            del mask
            return jax.nn.sigmoid(model.apply(v, x, cfg, dtype=dtype)["logits"])
    else:
        def loss_fn(params, batch_stats, x, mask):
            out = model.apply({"params": params, "batch_stats": batch_stats}, x, cfg, train=True, dtype=dtype)
            logits = out["logits"]
            loss = jnp.mean(jax.nn.softplus(logits) - logits * mask)  # binary cross-entropy
            return loss, out["batch_stats"]

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def run(v, x, mask):
            return grad_fn(v["params"], v["batch_stats"], x, mask)

    start = time.perf_counter()
    compiled = jax.jit(run).lower(variables, x, mask).compile()
    compile_s = time.perf_counter() - start
    flops = harness.flops(compiled)
    xla_total, xla_temp = harness.xla_bytes(compiled)
    result = dict(n=n, h=h, w=w, mode=mode, device=f"{device.platform}:{device.device_kind}",
                  compile_s=compile_s, flops=flops, xla_bytes=xla_total, xla_temp_bytes=xla_temp,
                  time_s=None, cpu_s=None, peak_bytes=None, calls=0, note="")

    limit = tiled.available_memory_bytes(device)
    if xla_total is not None and limit is not None and xla_total > 0.9 * limit:
        result["note"] = f"not run: needs {xla_total / 2**30:.1f} GiB, {limit / 2**30:.1f} GiB available"
        return result

    rss_before = harness.rss_bytes()
    cpu_before = harness.cpu_seconds()
    times = []
    start = time.perf_counter()
    jax.block_until_ready(compiled(variables, x, mask))
    times.append(time.perf_counter() - start)
    if times[0] < SLOW_CALL_S:  # fast enough to afford repetitions; the first was the warm-up
        cpu_before = harness.cpu_seconds()
        times = harness.time_calls(lambda: jax.block_until_ready(compiled(variables, x, mask)), max(1, repeats), warmup=0)
    result["cpu_s"] = (harness.cpu_seconds() - cpu_before) / len(times)
    result["time_s"] = harness.median(times)
    result["calls"] = len(times)
    result["peak_bytes"], result["peak_kind"] = harness.device_peak(device, rss_before)
    return result


def _fmt(value, scale=1.0, digits=1):
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value / scale:,.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes ({QUICK_SIZES}) for a smoke run")
    parser.add_argument("--sizes", default=None, help=f"comma-separated NxHxW batches (default {DEFAULT_SIZES})")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="computation dtype of the convolutions (parameters stay float32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls for programs under 2 s")
    parser.add_argument("--variant", default="Ptrain4", help="released configuration (Ptrain0..Ptrain4)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of forward,fwd+bwd")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: N,H,W,mode
    args = parser.parse_args()

    if args.measure:
        n, h, w, mode = args.measure.split(",")
        result = measure(int(n), int(h), int(w), mode, variant=args.variant, dtype_name=args.dtype,
                         repeats=args.repeats)
        harness.emit(result)
        return

    sizes = _parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; expected a subset of {MODES}")
    header = (f"{'batch':>12} {'mode':>8} {'compile s':>9} {'time s':>8} {'cpu s':>8} {'GFLOP':>9} "
              f"{'GFLOP/s':>8} {'GF/cpu-s':>8} {'XLA MB':>8} {'temp MB':>8} {'peak MB':>8}")
    printed_header = False
    for n, h, w in sizes:
        for mode in modes:
            r = harness.run_child("benchmarks.network", ["--measure", f"{n},{h},{w},{mode}", "--dtype", args.dtype,
                                                         "--repeats", args.repeats, "--variant", args.variant])
            if "error" in r:
                print(f"{n}x{h}x{w} {mode}: failed ({r['error']}): {r['detail']}", flush=True)
                continue
            if not printed_header:
                print(f"ManTra-Net {args.variant}, {args.dtype}, on {r['device']} "
                      f"({os.cpu_count()} CPU cores visible); peak MB = {r.get('peak_kind', 'peak')}")
                print(header)
                printed_header = True
            gflops = r["flops"] / 1e9 if r["flops"] is not None else None
            rate = gflops / r["time_s"] if (gflops is not None and r["time_s"]) else None
            cpu_s = r.get("cpu_s") if r["device"].startswith("cpu") else None
            cpu_rate = gflops / cpu_s if (gflops is not None and cpu_s) else None
            print(f"{f'{n}x{h}x{w}':>12} {mode:>8} {_fmt(r['compile_s']):>9} {_fmt(r['time_s'], digits=2):>8} "
                  f"{_fmt(cpu_s, digits=2):>8} {_fmt(gflops, digits=0):>9} {_fmt(rate):>8} {_fmt(cpu_rate):>8} "
                  f"{_fmt(r['xla_bytes'], 2**20, 0):>8} "
                  f"{_fmt(r['xla_temp_bytes'], 2**20, 0):>8} {_fmt(r['peak_bytes'], 2**20, 0):>8}"
                  + (f"  ({r['calls']} call{'s' if r['calls'] != 1 else ''})" if r["calls"] else "")
                  + (f"  {r['note']}" if r["note"] else ""), flush=True)


if __name__ == "__main__":
    main()
