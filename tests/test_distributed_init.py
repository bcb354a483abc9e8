"""Tests for mantra_jax.train.distributed: what reaches jax.distributed.initialize, a process with no
launcher, and a real two-process CPU run that JAX's own SLURM detection joins. (Two processes given
explicit flags train together in tests/test_multiprocess.py.)"""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import jax
import pytest

from mantra_jax.train import distributed

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE", "KUBERNETES_",
                     "JOB_COMPLETION", "MEGASCALE_")


def without_launchers(environ):
    return {k: v for k, v in environ.items() if not k.startswith(LAUNCHER_PREFIXES)}


@pytest.fixture()
def jax_initialize():
    with mock.patch.object(jax.distributed, "initialize") as spy:
        yield spy


def test_explicit_flags_switch_detection_off(jax_initialize):
    assert distributed.initialize("127.0.0.1:5555", 2, 1, initialization_timeout_s=7) is True
    jax_initialize.assert_called_once_with("127.0.0.1:5555", 2, 1, cluster_detection_method="deactivate",
                                           initialization_timeout=7)


def test_flags_left_unset_are_detected_by_jax(jax_initialize):
    distributed.initialize(num_processes=4)
    jax_initialize.assert_called_once_with(None, 4, None, cluster_detection_method=None,
                                           initialization_timeout=300)


def test_one_process_runs_alone_whatever_the_environment(jax_initialize):
    assert distributed.initialize(num_processes=1) is False
    jax_initialize.assert_not_called()


_ALONE_PROGRAM = textwrap.dedent("""
    import jax
    import pytest
    from mantra_jax.train import distributed

    with pytest.raises(ValueError, match="[Nn]umber of processes"):  # incomplete flags, no launcher
        distributed.initialize(coordinator_address="127.0.0.1:5555")
    assert distributed.initialize() is False and not jax.distributed.is_initialized()
    print("ALONE", jax.process_count())
""")


def test_no_launcher_and_no_flags_is_a_single_process():
    """The real jax.distributed.initialize (in a fresh process, before any JAX computation): with
    nothing to go on it refuses before starting anything, which initialize() takes as a
    single-process run; incomplete flags are JAX's error."""
    env = dict(without_launchers(os.environ), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", _ALONE_PROGRAM], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ALONE", "1"]


_TWO_PROCESS_PROGRAM = textwrap.dedent("""
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mantra_jax.train import distributed

    joined = distributed.initialize(initialization_timeout_s=60)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rank = jax.process_index()
    # Each process holds its own slice of a global batch; the sum crosses processes.
    local = np.array([rank + 1.0, 10.0 * (rank + 1)], np.float32)
    batch = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(batch)
    print("RESULT", joined, rank, jax.process_count(), batch.shape, float(total.addressable_data(0)),
          flush=True)
""")


def test_two_srun_tasks_join_through_jax_slurm_detection(tmp_path):
    """Two processes with the environment srun gives two tasks on one node: no flags, JAX finds
    the coordinator (the step's first node) and each task's rank; gloo collectives over loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(without_launchers(os.environ), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               SLURM_JOB_ID="1234", SLURM_NTASKS="2", SLURM_STEP_NODELIST="127.0.0.1",
               JAX_COORDINATOR_PORT=str(port))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_PROGRAM], cwd=tmp_path, text=True,
                              env=dict(env, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # Global batch: [1, 10] from process 0 and [2, 20] from process 1.
    lines = sorted(line for out, _ in outs for line in out.splitlines() if line.startswith("RESULT"))
    assert lines == [f"RESULT True {rank} 2 (4,) 33.0" for rank in range(2)]
