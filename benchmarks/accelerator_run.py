"""The whole accelerator run as one command that stops itself before a budget.

    python -m benchmarks.accelerator_run --out DIR --budget_s N [--quick]
        [--parts wheels,accelerator,loaders,train,environment] [--wheels carry/wheels]
        [--photos carry/pristine] [--scratch DIR] [--rows ROW,...] [--dtypes D,...]

(from the repository root; on a GPU machine, `benchmarks/README.md` gives the exact call). Parts,
in this order, each run as its own process(es):

  wheels       pip-installs the carried wheels (`--wheels`: grain, PyWavelets and what they need
               that the machine lacks; `benchmarks/prepare_accelerator_run.sh` downloads them) into
               SCRATCH/site, which every later process gets on its PYTHONPATH (and WHEELS/fallback,
               a newer protobuf, only if grain then fails to import over protobuf). Missing wheels are
               no failure: the parts that need grain or PyWavelets are then skipped if those do
               not import.
  accelerator  `python -m benchmarks.accelerator --json DIR/accelerator.json --no_loader` with the
               part's time as --budget_s: the headline rows first (imc_train and infer in
               bfloat16, JAX then PyTorch), the others as time allows.
  loaders      `python -m benchmarks.loader` for the IMC stream (imc_train's shape) and the forgery
               stream (e2e_train's shape) on the photos (`--photos`, else the bundled ones), one
               grain worker per usable core, against the samples/s of the train steps the
               accelerator part measured (bfloat16); target: >= 1.5 times.
  train        `python -m experiments.imc385 --flagfile=experiments/flags/imc385_accelerator.flags`
               (IMC-385, released width, bfloat16, batch 64 at 128 x 128, on the photos) with
               --max_seconds set to the time left, so it validates (top-k at HL0..HL5) and writes
               its report before the budget ends.
  environment  `nvidia-smi` and the versions (python, jax, jaxlib, flax, optax, orbax, numpy, cv2,
               torch, grain, pywt) and devices, as the processes of the run see them.

Budget: the run ends END_MARGIN_S before --budget_s. Each part may use the time that is left
minus the least time of the parts after it (MINIMUM_S; a part given less than its own least
time, by more than SLACK_S, is skipped and said to be), so the later parts keep their share and the training gets
whatever the others leave (at least 5 minutes in a full run of 570 s, if the earlier parts keep
to their shares). A process still running TERM_GRACE_S before its part's end gets SIGTERM (the
trainer then saves and stops; the other processes QUICK_GRACE_S before), at the end its whole
process group SIGKILL. `--quick` runs the same code paths at tiny sizes (the 1/8-width
network of `accelerator.py --quick`, tiny loader batches, a 1/8-width IMC-385 on 32 x 32
crops): a rehearsal on a CPU.

DIR holds at most 8 plain files, no folders (easy to copy back from a remote machine): run.json (the
plan, each part's status, times and figures, the loaders' targets), run.log (every process's output),
accelerator.json, train_metrics.jsonl, imc_report.md, environment.txt. run.json is rewritten after
every part, so an interrupted run keeps what it finished.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = ("wheels", "accelerator", "loaders", "train", "environment")
# The least seconds each part is started with (full run, --quick). Estimates for an H100 or H200
# (process start, compilation, the timed calls), not measurements: run.json records what each part took.
MINIMUM_S = {
    "wheels": (20.0, 20.0),
    "accelerator": (60.0, 30.0),
    "loaders": (60.0, 90.0),  # two streams: worker start-up and 8 s timed each (2 s with --quick)
    "train": (355.0, 160.0),  # at least 300 s of --max_seconds (100 with --quick) + TRAIN_AFTER_S + grace
    "environment": (15.0, 15.0),
}
END_MARGIN_S = 10.0
TRAIN_AFTER_S = (45.0, 50.0)  # process start before training, final validation and report
TERM_GRACE_S = 10.0  # the trainer, still running this long before its part's end, gets SIGTERM (it saves)
QUICK_GRACE_S = 2.0  # the same for the other processes (they need no time to stop)
SLACK_S = 5.0  # a part that finds its least time short by no more than this still runs
STREAM_RESERVE_S = (25.0, 45.0)  # of the loaders' time, kept for the second stream while the first runs
NEEDS = {"loaders": ("grain",), "train": ("grain", "pywt")}
TARGET_LOADER_RATIO = 1.5
FLAGFILE = "experiments/flags/imc385_accelerator.flags"
# The --quick training: the same trainer and flagfile, a network and batches a CPU runs in seconds.
QUICK_TRAIN_FLAGS = ("--width_scale=0.125", "--batch_size=8", "--crop=32", "--val_samples=76",
                     "--val_batch_size=38", "--steps_per_epoch=10", "--log_every=5", "--checkpoint_every=10")
OUT_FILES = ("run.json", "run.log", "accelerator.json", "train_metrics.jsonl", "imc_report.md", "environment.txt")


@dataclasses.dataclass
class Context:
    out: pathlib.Path
    scratch: pathlib.Path
    quick: bool
    wheels: pathlib.Path
    photos: Optional[pathlib.Path]
    rows: Optional[str] = None
    dtypes: Optional[str] = None
    env: dict = dataclasses.field(default_factory=dict)  # every child process's environment
    available: dict = dataclasses.field(default_factory=dict)  # module -> importable
    report: dict = dataclasses.field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    log: Optional[object] = None

    def say(self, text: str):
        line = f"[run {self.clock() - self.report.get('_t0', 0):6.0f}s] {text}"
        print(line, flush=True)
        if self.log:
            self.log.write(line + "\n")
            self.log.flush()


class PartSkipped(Exception):
    """A part that cannot run here (e.g. a missing input); not a failure of the run."""


class PartFailed(RuntimeError):
    """A part that failed, with the figures it had collected (kept in run.json)."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def minimum_s(part: str, quick: bool) -> float:
    return MINIMUM_S[part][1 if quick else 0]


def deadlines(parts, end: float, quick: bool) -> dict:
    """Each part's end: the run's end less the least time of the parts after it."""
    out, later = {}, 0.0
    for name in reversed(parts):
        out[name] = end - later
        later += minimum_s(name, quick)
    return out


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------
def run_logged(ctx: Context, label: str, command: list, deadline: float, env: Optional[dict] = None,
               grace: float = QUICK_GRACE_S) -> dict:
    """Runs `command` in its own process group, its output copied to run.log and stdout line by
    line; still running `grace` seconds before `deadline`, the process gets SIGTERM (only it: the
    trainer's data workers must live on while it saves), at `deadline` the group SIGKILL, and so
    does whatever the process leaves behind. Returns {"rc", "seconds", "stopped"} (stopped: it got
    SIGTERM)."""
    start = ctx.clock()
    proc = subprocess.Popen([str(c) for c in command], cwd=REPO, env={**os.environ, **ctx.env, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            errors="replace", start_new_session=True)

    def copy():
        for line in proc.stdout:
            text = f"[{label}] {line.rstrip()}"
            print(text, flush=True)
            if ctx.log:
                ctx.log.write(text + "\n")
                ctx.log.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    stopped = False
    try:
        proc.wait(timeout=max(0.0, deadline - grace - ctx.clock()))
    except subprocess.TimeoutExpired:
        stopped = True
        ctx.say(f"{label}: still running {grace:g} s before its part's end: SIGTERM")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=max(0.0, deadline - ctx.clock()))
        except subprocess.TimeoutExpired:
            ctx.say(f"{label}: SIGKILL")
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)  # what it left behind (e.g. loader workers)
    reader.join(timeout=5)
    return {"rc": proc.returncode, "seconds": round(ctx.clock() - start, 1), "stopped": stopped}


def _signal_group(pgid: int, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _python(*args) -> list:
    return [sys.executable, *args]


def _import_error(ctx: Context, module: str) -> Optional[str]:
    """None when `module` imports in a child process of the run, else the error's last line."""
    done = subprocess.run(_python("-c", f"import {module}"), cwd=REPO, env={**os.environ, **ctx.env},
                          capture_output=True, text=True, timeout=120)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1][-300:]


def _importable(ctx: Context, module: str) -> bool:
    return _import_error(ctx, module) is None


# --------------------------------------------------------------------------------------------
# The parts: each returns its figures (a dict) or raises
# --------------------------------------------------------------------------------------------
def part_wheels(ctx: Context, deadline: float) -> dict:
    wheels = sorted(ctx.wheels.glob("*.whl")) if ctx.wheels.is_dir() else []
    out = {"folder": str(ctx.wheels), "wheels": [w.name for w in wheels]}
    site = ctx.scratch / "site"

    def install(label, files):
        result = run_logged(ctx, label, _python("-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                                "--no-compile", "--no-cache-dir", "--upgrade", "--target", site,
                                                *files), deadline)
        if result["rc"] == 0 and "site" not in out:
            before = ctx.env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
            ctx.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), before) if p)
            out["site"] = str(site)
        return result

    if wheels:
        out.update(install("pip", wheels))
    else:
        out["note"] = "no wheels: the parts that need grain or PyWavelets run only if those import"
    errors = {m: _import_error(ctx, m) for m in ("grain", "pywt")}
    # grain's generated protobuf code needs a newer protobuf than an old image may have: the
    # fallback folder's protobuf is installed only then (it shadows the image's for this run).
    fallback = sorted((ctx.wheels / "fallback").glob("*.whl")) if wheels else []
    if errors["grain"] and "protobuf" in errors["grain"] and fallback:
        out["fallback"] = {"wheels": [w.name for w in fallback], "because": errors["grain"],
                           **install("pip fallback", fallback)}
        errors = {m: _import_error(ctx, m) for m in errors}
    ctx.available = {m: error is None for m, error in errors.items()}
    out["importable"] = dict(ctx.available)
    out["import_errors"] = {m: e for m, e in errors.items() if e}
    if wheels and out.get("rc") != 0:
        raise PartFailed(f"pip install of {len(wheels)} wheels failed (rc {out.get('rc')}); see run.log", out)
    return out


def part_accelerator(ctx: Context, deadline: float) -> dict:
    path = ctx.out / "accelerator.json"
    budget = deadline - ctx.clock() - QUICK_GRACE_S - 5.0  # its closing table and JSON inside the part
    command = _python("-m", "benchmarks.accelerator", "--json", path, "--no_loader", "--budget_s", f"{budget:.0f}")
    if ctx.quick:
        command += ["--quick", "--repeats", "3"]
    if ctx.rows:
        command += ["--rows", ctx.rows]
    if ctx.dtypes:
        command += ["--dtypes", ctx.dtypes]
    out = run_logged(ctx, "accelerator", command, deadline)
    if not path.is_file():
        raise PartFailed(f"benchmarks.accelerator wrote no {path.name} (rc {out['rc']})", out)
    report = json.loads(path.read_text())
    out["device"] = report.get("device")
    out["rows"] = {f"{s['row']}/{s['dtype']}": {**{k: s.get(k) for k in ("ms", "per_s", "tflops_per_s", "peak_share",
                                                                          "peak_gb", "torch_ms", "speed_ratio", "error")},
                                                 **({"sizes": s["sizes"]} if "sizes" in s else {})}
                   for s in report.get("summary", [])}
    out["measured"] = [f"{r['row']}/{r['dtype']}" for r in report.get("jax", []) if "median_s" in r]
    out["process_s"] = {f"{r['row']}/{r['dtype']}": round(r.get("process_s", 0), 1) for r in report.get("jax", [])}
    if out["rc"] != 0:
        raise PartFailed(f"benchmarks.accelerator exited {out['rc']} (its JSON is kept)", out)
    return out


def step_consumption(ctx: Context, row: str) -> Optional[dict]:
    """The samples/s of a train row measured by the accelerator part (bfloat16, else float32)."""
    rows = ctx.report.get("parts", {}).get("accelerator", {}).get("rows", {})
    for dtype in ("bfloat16", "float32"):
        per_s = (rows.get(f"{row}/{dtype}") or {}).get("per_s")
        if per_s:
            return {"row": row, "dtype": dtype, "samples_per_s": per_s}
    return None


def _shapes(quick: bool) -> dict:
    from benchmarks.accelerator import row_specs  # the harness's shapes; imports neither JAX nor torch

    specs = row_specs("quick" if quick else "full")
    return {"imc": specs["imc_train"], "forgery": specs["e2e_train"]}


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def part_loaders(ctx: Context, deadline: float) -> dict:
    out = {"photos": str(ctx.photos) if ctx.photos else "bundled", "workers": _usable_cores(), "streams": {}}
    seconds = 2.0 if ctx.quick else 8.0
    streams = (("imc", "imc_train"), ("forgery", "e2e_train"))
    for i, (stream, row) in enumerate(streams):
        spec = _shapes(ctx.quick)[stream]
        stream_deadline = deadline - STREAM_RESERVE_S[1 if ctx.quick else 0] * (len(streams) - 1 - i)
        path = ctx.scratch / f"loader_{stream}.json"
        command = _python("-m", "benchmarks.loader", "--stream", stream, "--workers", out["workers"],
                          "--batch_size", spec.batch, "--crop", spec.height, "--seconds", seconds, "--json", path)
        if ctx.photos:
            command += ["--photos", ctx.photos]
        step = step_consumption(ctx, row)
        if step:
            command += ["--consumed", f"{step['samples_per_s']:.6g}"]
        result = run_logged(ctx, f"loader {stream}", command, stream_deadline, env={"JAX_PLATFORMS": "cpu"})
        figures = json.loads(path.read_text()) if path.is_file() and result["rc"] == 0 else {}
        rate = (figures.get("samples_per_s") or {}).get(str(out["workers"]))
        entry = {"shape": spec.shape, "samples_per_s": rate, "step": step, **result}
        if rate and step:
            entry["ratio"] = rate / step["samples_per_s"]
            entry["target"] = "PASS" if entry["ratio"] >= TARGET_LOADER_RATIO else "FAIL"
        out["streams"][stream] = entry
    failed = [s for s, e in out["streams"].items() if e["samples_per_s"] is None]
    if failed:
        raise PartFailed(f"no loader rate for {', '.join(failed)}; see run.log", out)
    return out


def part_train(ctx: Context, deadline: float) -> dict:
    workdir = ctx.scratch / "imc385"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, never a resumed one
    max_seconds = deadline - TERM_GRACE_S - ctx.clock() - TRAIN_AFTER_S[1 if ctx.quick else 0]
    if max_seconds < 1:
        raise PartSkipped(f"{max_seconds:.0f} s for training")
    command = _python("-m", "experiments.imc385", f"--flagfile={FLAGFILE}", f"--workdir={workdir}",
                      f"--max_seconds={max_seconds:.0f}", f"--workers={_usable_cores()}",
                      f"--data_dir={ctx.photos or ''}")
    if ctx.quick:
        command += list(QUICK_TRAIN_FLAGS)
    out = {"max_seconds": round(max_seconds), "flagfile": FLAGFILE, "quick_flags": list(QUICK_TRAIN_FLAGS) if ctx.quick else []}
    out.update(run_logged(ctx, "train", command, deadline, grace=TERM_GRACE_S))
    for name, target in (("metrics.jsonl", "train_metrics.jsonl"), ("imc_report.md", "imc_report.md")):
        if (workdir / name).is_file():
            shutil.copyfile(workdir / name, ctx.out / target)
    out.update(summarize_training(workdir))
    out["harness_step"] = step_consumption(ctx, "imc_train")  # the bare step, for what the trainer reached
    if "validation" not in out:
        raise PartFailed(f"the trainer wrote no final_metrics.json (rc {out['rc']}); see run.log", out)
    return out


def summarize_training(workdir: pathlib.Path) -> dict:
    """Steps, samples/s, the loss curve and the final validation of a trainer's work directory."""
    out = {}
    rows = []
    if (workdir / "metrics.jsonl").is_file():
        for line in (workdir / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    train = [r for r in rows if r.get("kind") == "train"]
    if train:
        rates = sorted(r["samples_per_s"] for r in train if r.get("samples_per_s"))
        out["steps"] = train[-1]["step"]
        out["loss_curve"] = [[r["step"], round(r["loss"], 4)] for r in train]
        if rates:
            out["samples_per_s_median"] = rates[len(rates) // 2]
            out["samples_per_s_last"] = [r for r in train if r.get("samples_per_s")][-1]["samples_per_s"]
    out["validation_curve"] = [{k: r[k] for k in ("step", "val_loss", "L5_top1", "L0_top1") if k in r}
                               for r in rows if r.get("kind") == "val"]
    if (workdir / "final_metrics.json").is_file():
        final = json.loads((workdir / "final_metrics.json").read_text())
        out["validation"] = {k: final.get(k) for k in ("step", "val_loss", "L5_top1", "L5_top5", "L0_top1",
                                                        "L0_top5", "time_limited")}
    return out


ENV_SCRIPT = r"""
import importlib, json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable, "versions": {}}
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "cv2", "torch", "grain", "pywt",
             "tensorboardX"):
    try:
        module = importlib.import_module(name)
        out["versions"][name] = getattr(module, "__version__", "?")
    except Exception as error:
        out["versions"][name] = f"not importable ({type(error).__name__})"
try:
    import jax
    out["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
except Exception as error:
    out["jax_devices"] = f"failed: {error}"
try:
    import torch
    out["torch_cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    out["torch_cuda_version"] = torch.version.cuda
except Exception as error:
    out["torch_cuda"] = f"failed: {type(error).__name__}"
print("ENV " + json.dumps(out))
"""


def part_environment(ctx: Context, deadline: float) -> dict:
    sections = []
    for command in (["nvidia-smi"], ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                     "clocks.sm,power.limit,temperature.gpu", "--format=csv"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, deadline - ctx.clock()))
            text = done.stdout + done.stderr
        except (OSError, subprocess.TimeoutExpired) as error:
            text = f"not run: {error}"
        sections.append(f"$ {' '.join(command)}\n{text.rstrip()}\n")
    (ctx.out / "environment.txt").write_text("\n".join(sections))  # kept if the versions take too long
    try:
        done = subprocess.run(_python("-c", ENV_SCRIPT), cwd=REPO, env={**os.environ, **ctx.env}, capture_output=True,
                              text=True, timeout=max(1.0, deadline - ctx.clock()))
        lines = [line for line in done.stdout.splitlines() if line.startswith("ENV ")]
        env = json.loads(lines[-1][4:]) if lines else {"error": done.stderr[-500:]}
    except subprocess.TimeoutExpired:
        env = {"error": "the versions took longer than the part's time"}
    sections.append("$ versions\n" + json.dumps(env, indent=1) + "\n")
    (ctx.out / "environment.txt").write_text("\n".join(sections))
    return {"nvidia_smi": "ok" if "NVIDIA-SMI" in sections[0] else sections[0].splitlines()[-1][:200], **env}


PART_FUNCTIONS = {"wheels": part_wheels, "accelerator": part_accelerator, "loaders": part_loaders,
                  "train": part_train, "environment": part_environment}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _write_report(ctx: Context):
    path = ctx.out / "run.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: v for k, v in ctx.report.items() if not k.startswith("_")}, indent=1))
    os.replace(tmp, path)


def targets(report: dict) -> list:
    """The loaders' targets with what this run measured (the accelerator rows' figures are in
    run.json beside them: ms, % peak, speed_ratio)."""
    parts = report.get("parts", {})
    out = []
    for stream, entry in parts.get("loaders", {}).get("streams", {}).items():
        ratio = entry.get("ratio")
        out.append({"target": f"loader {stream} >= {TARGET_LOADER_RATIO:g}x the step's consumption"
                    + (f" ({ratio:.2f}x)" if ratio else ""), "verdict": entry.get("target", "n/a")})
    return out


def summary_lines(report: dict) -> list:
    parts = report.get("parts", {})
    lines = ["parts: " + ", ".join(f"{name} {p.get('status')} ({p.get('seconds', 0):.0f} s)"
                                   for name, p in parts.items())]
    train = parts.get("train", {})
    if train.get("validation"):
        v, curve = train["validation"], train.get("loss_curve") or [[None, None]]
        pct = lambda key: "?" if v.get(key) is None else f"{100 * v[key]:.1f} %"
        lines.append(f"training: {v.get('step')} steps, median {train.get('samples_per_s_median') or 0:.1f} samples/s, "
                     f"loss {curve[0][1]} -> {curve[-1][1]}; validation HL5 top-1 {pct('L5_top1')}, top-5 "
                     f"{pct('L5_top5')}; HL0 top-1 {pct('L0_top1')}, top-5 {pct('L0_top5')}")
        step = train.get("harness_step")
        if step and train.get("samples_per_s_median"):
            lines.append(f"training reached {train['samples_per_s_median'] / step['samples_per_s']:.0%} of the bare "
                         f"imc_train {step['dtype']} step's {step['samples_per_s']:.1f} samples/s")
    for key, row in parts.get("accelerator", {}).get("rows", {}).items():
        if row.get("sizes"):
            from benchmarks.accelerator import sizes_text  # imports neither JAX nor torch

            lines.append(f"compilation per new image size ({key}, first call / median after it): "
                         + sizes_text(row["sizes"]))
    lines += [f"  {t['verdict']:<4}  {t['target']}" for t in report.get("targets", [])]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder (at most 8 files)")
    parser.add_argument("--budget_s", required=True, type=float, help="seconds the whole run may take")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code paths (a CPU rehearsal)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--wheels", type=pathlib.Path, default=REPO / "carry" / "wheels", help="folder of wheels")
    parser.add_argument("--photos", type=pathlib.Path, default=REPO / "carry" / "pristine",
                        help="pristine photo folder (missing: the bundled photos)")
    parser.add_argument("--scratch", type=pathlib.Path, default=None,
                        help="work folder (installed wheels, the trainer's checkpoints; default: a new temporary one)")
    parser.add_argument("--rows", default=None, help="benchmarks.accelerator --rows (default: all)")
    parser.add_argument("--dtypes", default=None, help="benchmarks.accelerator --dtypes (default: both)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--parts: expected a comma-separated subset of {','.join(PARTS)}, got {args.parts!r}")
    parts = [p for p in PARTS if p in parts]  # always in the run's order
    if not args.budget_s > 0:
        parser.error("--budget_s must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    clutter = [p.name for p in args.out.iterdir() if p.name not in OUT_FILES]
    if clutter:
        parser.error(f"--out {args.out} holds other files ({', '.join(sorted(clutter)[:5])}): give an empty folder")
    scratch = args.scratch or pathlib.Path(tempfile.mkdtemp(prefix="accelerator_run_"))
    scratch.mkdir(parents=True, exist_ok=True)
    photos = args.photos if args.photos.is_dir() else None

    ctx = Context(out=args.out, scratch=scratch, quick=args.quick, wheels=args.wheels, photos=photos,
                  rows=args.rows, dtypes=args.dtypes, env={"PYTHONUNBUFFERED": "1"})
    ctx.clock = _clock  # looked up here, so that a test can replace it
    t0 = ctx.clock()
    end = t0 + args.budget_s - END_MARGIN_S
    plan = deadlines(parts, end, args.quick)
    ctx.report = {
        "_t0": t0, "argv": sys.argv if argv is None else list(argv), "quick": args.quick, "budget_s": args.budget_s,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "photos": str(photos) if photos else f"bundled ({args.photos} missing)", "scratch": str(scratch),
        "plan": {name: {"minimum_s": minimum_s(name, args.quick), "ends_at_s": round(plan[name] - t0, 1)}
                 for name in parts},
        "parts": {},
    }
    with open(args.out / "run.log", "a", encoding="utf-8") as log:
        ctx.log = log
        ctx.say(f"budget {args.budget_s:g} s, parts {','.join(parts)}, photos {ctx.report['photos']}, "
                f"scratch {scratch}" + (", --quick" if args.quick else ""))
        for name in parts:
            start = ctx.clock()
            left = plan[name] - start
            entry = {"started_s": round(start - t0, 1), "time_given_s": round(left, 1)}
            if left < minimum_s(name, args.quick) - SLACK_S:
                entry.update(status="skipped", reason=f"{left:.0f} s left, {minimum_s(name, args.quick):.0f} s needed")
            elif missing := [m for m in NEEDS.get(name, ()) if ctx.available.get(m) is False
                             or (m not in ctx.available and not _importable(ctx, m))]:
                entry.update(status="skipped", reason=f"{', '.join(missing)} not importable (no wheels?)")
            else:
                ctx.say(f"{name}: up to {left:.0f} s")
                try:
                    entry.update(PART_FUNCTIONS[name](ctx, plan[name]))
                    entry["status"] = "ok"
                except PartSkipped as why:
                    entry.update(status="skipped", reason=str(why))
                except PartFailed as error:
                    entry.update(error.figures)
                    entry.update(status="failed", error=str(error)[:500])
                except Exception as error:  # noqa: BLE001 - the run goes on with the next part
                    entry.update(status="failed", error=f"{type(error).__name__}: {error}"[:500])
            entry["seconds"] = round(ctx.clock() - start, 1)
            ctx.report["parts"][name] = entry
            ctx.report["targets"] = targets(ctx.report)
            ctx.report["elapsed_s"] = round(ctx.clock() - t0, 1)
            _write_report(ctx)
            ctx.say(f"{name}: {entry['status']} in {entry['seconds']:.0f} s"
                    + (f" ({entry.get('reason') or entry.get('error')})" if entry["status"] != "ok" else ""))
        for line in summary_lines(ctx.report):
            ctx.say(line)
        ctx.say(f"done in {ctx.clock() - t0:.0f} s of {args.budget_s:g}; figures in {args.out / 'run.json'}")
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _clock() -> float:
    return time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
