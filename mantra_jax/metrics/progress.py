"""What a person sees of a run: a progress line, metrics.jsonl, TensorBoard events.

Only process 0 writes; the other processes get a writer that does nothing.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """A progress line: step, loss, steps/s, samples/s, ETA."""

    def __init__(self, total_steps: int, batch_size: int, stream=None, start_step: int = 0):
        self.total, self.batch = total_steps, batch_size
        self.stream = stream or sys.stderr
        self._t0, self._s0 = time.perf_counter(), start_step
        self._measured = False  # until reset_clock: the clock holds compilation, no rate to show

    def reset_clock(self, step: int):
        """Starts measuring rates at `step` (after the first step, which holds the compilation)."""
        self._t0, self._s0, self._measured = time.perf_counter(), step, True

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self._t0
        return (step - self._s0) / dt if dt > 0 else float("nan")

    def line(self, step: int, loss: float, extra: str = "") -> str:
        if not self._measured:  # a rate over the compilation would give an ETA of hours for minutes
            return (f"step {step}/{self.total}  loss {loss:.4f}  {time.perf_counter() - self._t0:.1f} s "
                    f"(compilation included; rates and ETA from the next line on){extra}")
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate and rate > 0 else float("nan")
        return (f"step {step}/{self.total}  loss {loss:.4f}  {rate:.2f} steps/s  "
                f"{rate * self.batch:.1f} samples/s  ETA {_fmt_seconds(eta)}{extra}")

    def show(self, step: int, loss: float, extra: str = ""):
        print(self.line(step, loss, extra), file=self.stream, flush=True)


def printable(text: str) -> str:
    """`text` as any stream can write it: a file name that is not UTF-8 (its odd bytes held as
    surrogates) with those bytes as \\udcXX escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ProgressLine:
    """A progress line for loops over files (count, rate, ETA, the current item) on stderr: one
    refreshed line on a terminal, at most one line a second otherwise."""

    def __init__(self, total: int, label: str, stream=None, min_interval_s: float = 1.0):
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start, self._last = time.perf_counter(), -float("inf")

    def update(self, done: int, item: str = ""):
        now = time.perf_counter()
        if done < self.total and now - self._last < self.min_interval_s:
            return
        self._last = now
        rate = done / (now - self._start) if now > self._start else float("nan")
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        line = printable(f"[{self.label}] {done}/{self.total}  {rate:.2f}/s  ETA {_fmt_seconds(eta)}  {item}".rstrip())
        if self.interactive:
            self.stream.write("\r" + line[:150].ljust(150) + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str):
        """A line of its own (e.g. a skipped file), not overwritten by the next update."""
        print(("\n" if self.interactive else "") + printable(text), file=self.stream, flush=True)


class MetricsWriter:
    """metrics.jsonl (one JSON object per line, always with "step") and TensorBoard scalars."""

    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter  # no TensorFlow needed

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is in requirements.txt
            self._tb = None

    def write(self, step: int, metrics: dict, kind: str = "train"):
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            row[k] = float(v) if isinstance(v, (int, float)) or hasattr(v, "dtype") else v
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind", "time") and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, int(step))

    def close(self):
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_after(path, step: int):
    """Drops metric rows past `step` (a resumed run rewrites the steps it repeats)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
