"""What the benchmarks share: timed calls, XLA's FLOP and memory figures, process memory, random
weights of the model's shapes, and one process per measurement.

Nothing here imports JAX or PyTorch at module level: the orchestrating processes stay free of both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

WARMUP_CALLS = 2


def time_calls(call, count: int, warmup: int = WARMUP_CALLS) -> list[float]:
    """Seconds of each of `count` calls after `warmup` untimed ones; `call` must synchronise."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def median(values) -> float:
    import numpy as np

    return float(np.median(values))


def flops(program) -> Optional[float]:
    """XLA's FLOP count of a lowered or compiled program. `cost_analysis()` is a dict in recent JAX
    and was a list of one dict per program before."""
    cost = program.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    count = (cost or {}).get("flops")
    return float(count) if count is not None and count >= 0 else None


def xla_bytes(compiled) -> tuple[Optional[int], Optional[int]]:
    """(temporaries + arguments + outputs - aliased, temporaries) of XLA's compiled memory analysis;
    (None, None) where the backend has none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None, None
    if m is None:
        return None, None
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return int(total), int(m.temp_size_in_bytes)


def rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def cpu_seconds() -> float:
    """User + system seconds of this process, all threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def device_peak(device, rss_before: Optional[int]) -> tuple[Optional[int], Optional[str]]:
    """(bytes, kind): an accelerator's `peak_bytes_in_use` (of the whole process); on a CPU the
    growth of the peak RSS over `rss_before` (approximate: compilation can set it)."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "peak_bytes_in_use"
    if rss_before is None:
        return None, None
    return max(0, peak_rss_bytes() - rss_before), "peak RSS growth"


def usable_cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


# --------------------------------------------------------------------------------------------
# One process per measurement: the child prints tagged JSON lines, the parent reads them
# --------------------------------------------------------------------------------------------
def emit(result: dict, tag: str = "RESULT"):
    """A child's result (or, tag PARTIAL, one finished part of it) as one line of stdout."""
    print(f"{tag} " + json.dumps(result), flush=True)


def tagged(stdout: str, tag: str) -> list[dict]:
    """The JSON objects of a child's lines that start with `tag`."""
    prefix = tag + " "
    return [json.loads(line[len(prefix):]) for line in stdout.splitlines() if line.startswith(prefix)]


def run_child(module: str, args: list, timeout: Optional[float] = None, env: Optional[dict] = None) -> dict:
    """`python -m module *args` in a fresh process (so that one measurement's memory peak cannot
    hide another's): its last RESULT, or {"error", "detail"} ("timeout", "OOM" or "exit N"; with
    the PARTIAL results it printed as "rows"), plus "process_s" (its wall time, start-up and
    compilation included: what a device run has to budget)."""
    command = [sys.executable, "-m", module] + [str(a) for a in args]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
        result = {"error": "timeout", "detail": f"no result within {timeout:.0f} s", "process_s": timeout}
        partial = tagged(out or "", "PARTIAL")
        return dict(result, rows=partial) if partial else result
    results = tagged(done.stdout, "RESULT")
    if done.returncode == 0 and results:
        return dict(results[-1], process_s=time.perf_counter() - start)
    text = (done.stderr or "") + (done.stdout or "")
    oom = any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemory"))
    tail = " | ".join(text.strip().splitlines()[-3:])
    result = {"error": "OOM" if oom else f"exit {done.returncode}", "detail": tail[-600:],
              "process_s": time.perf_counter() - start}
    partial = tagged(done.stdout, "PARTIAL")
    return dict(result, rows=partial) if partial else result
