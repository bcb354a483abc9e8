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
import json
import os
import subprocess
import sys
import time

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


def _current_rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _flops(compiled):
    """`cost_analysis()` is a dict in recent JAX and was a list of one dict per program before."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _xla_bytes(compiled):
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None, None
    if m is None:
        return None, None
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return int(total), int(m.temp_size_in_bytes)


def measure(n, h, w, mode, *, variant, dtype_name, repeats):
    """One measurement in this process; returns a JSON-able dict."""
    import resource

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
    flops = _flops(compiled)
    xla_total, xla_temp = _xla_bytes(compiled)
    result = dict(n=n, h=h, w=w, mode=mode, device=f"{device.platform}:{device.device_kind}",
                  compile_s=compile_s, flops=flops, xla_bytes=xla_total, xla_temp_bytes=xla_temp,
                  time_s=None, cpu_s=None, peak_bytes=None, calls=0, note="")

    limit = tiled.available_memory_bytes(device)
    if xla_total is not None and limit is not None and xla_total > 0.9 * limit:
        result["note"] = f"not run: needs {xla_total / 2**30:.1f} GiB, {limit / 2**30:.1f} GiB available"
        return result

    rss_before = _current_rss_bytes()
    cpu_before = _cpu_seconds()
    times = []
    start = time.perf_counter()
    jax.block_until_ready(compiled(variables, x, mask))
    times.append(time.perf_counter() - start)
    if times[0] < SLOW_CALL_S:  # fast enough to afford repetitions; the first was the warm-up
        times, cpu_before = [], _cpu_seconds()
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            jax.block_until_ready(compiled(variables, x, mask))
            times.append(time.perf_counter() - start)
    result["cpu_s"] = (_cpu_seconds() - cpu_before) / len(times)
    result["time_s"] = float(np.median(times))
    result["calls"] = len(times)
    if device.platform == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        result["peak_bytes"] = max(0, peak - rss_before) if rss_before is not None else None
        result["peak_kind"] = "peak RSS growth"
    else:
        result["peak_bytes"] = device.memory_stats().get("peak_bytes_in_use")
        result["peak_kind"] = "peak_bytes_in_use"
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
        print("RESULT " + json.dumps(result))
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
            command = [sys.executable, "-m", "benchmarks.network", "--measure", f"{n},{h},{w},{mode}",
                       "--dtype", args.dtype, "--repeats", str(args.repeats), "--variant", args.variant]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                print(f"{n}x{h}x{w} {mode}: failed (exit {done.returncode}): {' | '.join(tail)}", flush=True)
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            if not printed_header:
                print(f"ManTra-Net {args.variant}, {args.dtype}, on {r['device']} "
                      f"({os.cpu_count()} CPU cores visible); peak MB = {r.get('peak_kind', 'peak')}")
                print(header)
                printed_header = True
            gflops = r["flops"] / 1e9 if r["flops"] == r["flops"] else None
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
