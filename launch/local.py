"""Runs N processes of one Python module on this machine as one multi-process JAX run.

    python launch/local.py --num_processes=2 experiments.imc385 --flagfile=F [--flag=value ...]

Each process runs `python -m MODULE ARGS... --coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=i` (PORT: a free loopback port unless --port is given), so the
trainers' `mantra_jax.train.distributed.initialize` joins them. Their output is forwarded line by
line with an `[i] ` prefix. If one process fails, the others are stopped (SIGTERM, then SIGKILL
after --grace_s) and the launcher exits with the failed process's status; Ctrl-C stops them all.
A SIGTERM to the launcher is passed on; when every trainer then saves and exits with 75 (stopped,
resumable), so does the launcher.

On CPU the processes share the machine's cores. On a multi-GPU machine, --devices_per_process=K
gives process i its own K GPUs through CUDA_VISIBLE_DEVICES (a slice of the GPUs visible to the
launcher). Standard library only: this file never imports JAX.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_POLL_S = 0.05
PREEMPTED = 75  # exit status of a trainer stopped by SIGTERM after saving (experiments/common.py)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_command(python: str, module: str, module_args: list[str], coordinator: str,
                    num_processes: int, process_id: int) -> list[str]:
    """The command line of process `process_id`."""
    return [python, "-m", module, *module_args, f"--coordinator_address={coordinator}",
            f"--num_processes={num_processes}", f"--process_id={process_id}"]


def visible_devices_for(process_id: int, devices_per_process: int,
                        parent_visible: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES value of one process: its slice of the launcher's devices."""
    if parent_visible:
        devices = [d.strip() for d in parent_visible.split(",") if d.strip()]
    else:
        devices = None
    first = process_id * devices_per_process
    if devices is None:
        return ",".join(str(d) for d in range(first, first + devices_per_process))
    if first + devices_per_process > len(devices):
        raise ValueError(
            f"process {process_id} needs devices {first}..{first + devices_per_process - 1} but "
            f"only {len(devices)} are visible (CUDA_VISIBLE_DEVICES={parent_visible})")
    return ",".join(devices[first:first + devices_per_process])


def _forward(stream, prefix: bytes, lock: threading.Lock) -> None:
    # Bytes, not text: a child's partial UTF-8 sequence or odd encoding must not kill the pump.
    out = sys.stdout.buffer
    for line in iter(stream.readline, b""):
        if not line.endswith(b"\n"):
            line += b"\n"
        with lock:
            out.write(prefix + line)
            out.flush()
    stream.close()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(processes: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every live process group, then SIGKILL what is left after `grace_s`."""
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        time.sleep(_POLL_S)
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def exit_status(returncode: int) -> int:
    """A shell-style exit status: a process killed by signal S gives 128 + S."""
    return 128 - returncode if returncode < 0 else returncode


class _Terminated(Exception):
    """The launcher itself received SIGTERM (a scheduler's preemption, `kill`)."""


def _raise_terminated(signum, frame):
    del signum, frame
    raise _Terminated()


def run(num_processes: int, module: str, module_args: list[str], *, port: int | None = None,
        python: str = sys.executable, devices_per_process: int = 0, grace_s: float = 10.0) -> int:
    """Starts the processes, forwards their output, and returns the launcher's exit status."""
    if num_processes < 1:
        raise ValueError(f"--num_processes must be at least 1, got {num_processes}")
    coordinator = f"127.0.0.1:{port or free_loopback_port()}"
    lock = threading.Lock()
    processes: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    parent_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    status = 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for process_id in range(num_processes):
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            if devices_per_process:
                env["CUDA_VISIBLE_DEVICES"] = visible_devices_for(
                    process_id, devices_per_process, parent_visible)
            command = process_command(python, module, module_args, coordinator, num_processes,
                                      process_id)
            # A session of its own per process, so that stopping it also stops its children
            # (data-loading workers) and the terminal's Ctrl-C reaches only the launcher.
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            processes.append(process)
            pump = threading.Thread(target=_forward,
                                    args=(process.stdout, f"[{process_id}] ".encode(), lock),
                                    daemon=True)
            pump.start()
            pumps.append(pump)
        while True:
            codes = [p.poll() for p in processes]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                process_id, code = failed[0]
                status = exit_status(code)
                with lock:
                    print(f"[launch] process {process_id} exited with status {status}; "
                          "stopping the others", file=sys.stderr, flush=True)
                stop_all(processes, grace_s)
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(_POLL_S)
    except (KeyboardInterrupt, _Terminated) as error:
        with lock:
            print("[launch] interrupted; stopping all processes", file=sys.stderr, flush=True)
        stop_all(processes, grace_s)
        status = 128 + (signal.SIGINT if isinstance(error, KeyboardInterrupt) else signal.SIGTERM)
        codes = {exit_status(p.returncode) for p in processes if p.returncode is not None}
        if codes == {PREEMPTED}:  # every trainer saved and stopped: the run can be resumed
            status = PREEMPTED
    finally:
        stop_all(processes, grace_s)
        for pump in pumps:
            pump.join(timeout=5)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --num_processes=N [options] MODULE [MODULE_ARGS ...]")
    parser.add_argument("--num_processes", "-n", type=int, required=True,
                        help="how many processes to start")
    parser.add_argument("--port", type=int, default=None,
                        help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the processes (default: this one)")
    parser.add_argument("--devices_per_process", type=int, default=0,
                        help="give each process its own K GPUs via CUDA_VISIBLE_DEVICES "
                             "(default 0: leave the environment alone, e.g. on CPU)")
    parser.add_argument("--grace_s", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping processes")
    parser.add_argument("module", help="Python module run with `python -m`")
    parser.add_argument("module_args", nargs=argparse.REMAINDER,
                        help="arguments passed to every process")
    args = parser.parse_args(argv)
    try:
        return run(args.num_processes, args.module, args.module_args, port=args.port,
                   python=args.python, devices_per_process=args.devices_per_process,
                   grace_s=args.grace_s)
    except ValueError as error:
        parser.error(str(error))
        return 2


if __name__ == "__main__":
    sys.exit(main())
