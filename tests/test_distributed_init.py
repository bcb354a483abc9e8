"""Tests for mantra_jax.train.distributed: launcher detection, and a real two-process CPU run."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest

from mantra_jax.train import distributed

REPO = Path(__file__).resolve().parents[1]

# What srun puts in the environment of task 5 of 8 (2 nodes x 4 tasks) of job 1234.
SLURM_TASK_5_OF_8 = {
    "SLURM_JOB_ID": "1234",
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NODELIST": "gpu[017-018]",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
}
# Open MPI 4: rank 3 of 4, two per node.
OMPI4_RANK_3_OF_4 = {
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
}


def resolve(*args, environ, **kwargs):
    return distributed.resolve_setup(*args, environ=environ, **kwargs)


def test_no_launcher_and_no_arguments_is_a_single_process():
    assert resolve(environ={"HOME": "/root", "PATH": "/usr/bin"}) is None


@pytest.mark.parametrize("unset", [dict(coordinator_address="", num_processes=0, process_id=-1),
                                   dict(coordinator_address=None, num_processes=None,
                                        process_id=None)])
def test_empty_flag_values_count_as_unset(unset):
    assert resolve(environ={}, **unset) is None


def test_explicit_arguments_switch_detection_off_even_inside_slurm():
    setup = resolve("127.0.0.1:5555", 2, 1, environ=SLURM_TASK_5_OF_8)
    assert setup == distributed.DistributedSetup(
        "explicit", "127.0.0.1:5555", 2, 1, None, "deactivate")


def test_explicit_single_process_wins_over_a_cluster_environment():
    assert resolve(num_processes=1, environ=SLURM_TASK_5_OF_8) is None


@pytest.mark.parametrize("args, message", [
    (dict(coordinator_address="h:1"), "num_processes, process_id"),
    (dict(num_processes=2, process_id=0), "coordinator_address"),
])
def test_incomplete_explicit_arguments_name_what_is_missing(args, message):
    with pytest.raises(ValueError, match=message):
        resolve(environ={}, **args)


def test_process_id_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="out of range"):
        resolve("127.0.0.1:5555", 2, 2, environ={})


def test_slurm_task_takes_count_and_rank_from_srun():
    setup = resolve(environ=SLURM_TASK_5_OF_8)
    assert (setup.source, setup.num_processes, setup.process_id) == ("slurm", 8, 5)
    assert setup.cluster_detection_method == "slurm"
    # Every task sees all GPUs: JAX's own choice (the local rank) is kept.
    assert setup.local_device_ids is None


def test_slurm_single_task_is_a_single_process():
    environ = dict(SLURM_TASK_5_OF_8, SLURM_NTASKS="1", SLURM_PROCID="0")
    assert resolve(environ=environ) is None


def test_slurm_allocation_entered_without_srun_is_an_error():
    environ = {"SLURM_JOB_ID": "1234", "SLURM_NTASKS": "8"}
    with pytest.raises(RuntimeError, match="srun"):
        resolve(environ=environ)


def test_explicit_arguments_override_what_slurm_says():
    setup = resolve(num_processes=4, environ=SLURM_TASK_5_OF_8)
    assert (setup.num_processes, setup.process_id) == (4, 5)


@pytest.mark.parametrize("visible, tasks_per_node, local_id, expected", [
    ("3", "4(x2)", "1", (0,)),                     # --gpus-per-task=1: one GPU, index 0
    ("0,1,2,3", "4(x2)", "1", (1,)),               # one task per GPU, all visible
    ("0,1,2,3", "1(x2)", "0", (0, 1, 2, 3)),       # one task per node drives them all
    ("0,1,2,3", "2(x2)", "1", (2, 3)),             # two tasks per node, two GPUs each
    ("0,1,2", "2(x2)", "1", None),                 # uneven split: leave it to JAX
    ("NoDevFiles", "4(x2)", "1", None),            # SLURM's "no GPU" marker
])
def test_slurm_gpu_choice_follows_visible_devices(visible, tasks_per_node, local_id, expected):
    environ = dict(SLURM_TASK_5_OF_8, CUDA_VISIBLE_DEVICES=visible,
                   SLURM_STEP_TASKS_PER_NODE=tasks_per_node, SLURM_LOCALID=local_id)
    setup = resolve(environ=environ)
    assert setup.local_device_ids == expected
    if expected is not None:
        # The local ids must index only devices this process can see.
        assert max(expected) < len(visible.split(","))


def test_local_device_ids_from_argument_or_environment_win():
    environ = dict(SLURM_TASK_5_OF_8, CUDA_VISIBLE_DEVICES="0,1,2,3", JAX_LOCAL_DEVICE_IDS="3")
    assert resolve(environ=environ).local_device_ids == (3,)
    assert resolve(local_device_ids="0,2", environ=environ).local_device_ids == (0, 2)


@pytest.mark.parametrize("text, expected", [
    ("4", [4]), ("4(x2)", [4, 4]), ("4(x2),3", [4, 4, 3]), ("2,1(x3)", [2, 1, 1, 1]),
])
def test_parse_slurm_tasks_per_node(text, expected):
    assert distributed.parse_slurm_tasks_per_node(text) == expected


def test_open_mpi_4_lets_jax_derive_the_coordinator():
    setup = resolve(environ=OMPI4_RANK_3_OF_4)
    assert (setup.source, setup.num_processes, setup.process_id) == ("ompi", 4, 3)
    assert setup.cluster_detection_method == "ompi"
    assert setup.coordinator_address is None


def test_open_mpi_5_needs_a_coordinator_address():
    environ = {k: v for k, v in OMPI4_RANK_3_OF_4.items() if k != "OMPI_MCA_orte_hnp_uri"}
    with pytest.raises(RuntimeError, match="JAX_COORDINATOR_ADDRESS"):
        resolve(environ=environ)
    setup = resolve(environ=dict(environ, JAX_COORDINATOR_ADDRESS="node7:4000"))
    assert setup == distributed.DistributedSetup("ompi", "node7:4000", 4, 3, (1,), "deactivate")
    setup = resolve(environ=environ, have_mpi4py=True)
    assert setup.cluster_detection_method == "mpi4py"


def test_open_mpi_wins_over_slurm_like_jax_does():
    # mpirun inside a SLURM allocation: both environments are present.
    setup = resolve(environ={**SLURM_TASK_5_OF_8, **OMPI4_RANK_3_OF_4})
    assert setup.source == "ompi"


def test_tpu_vm_single_host_versus_pod():
    assert resolve(environ={"TPU_WORKER_HOSTNAMES": "t1"}, running_in_tpu_vm=True) is None
    pod = resolve(environ={"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4", "TPU_WORKER_ID": "2"},
                  running_in_tpu_vm=True)
    assert pod.source == "tpu" and pod.cluster_detection_method is None
    # GCE TPU VMs keep the worker list in the VM metadata, which only JAX reads.
    assert resolve(environ={}, running_in_tpu_vm=True).source == "tpu"
    # The same variables outside a TPU VM mean nothing.
    assert resolve(environ={"TPU_WORKER_HOSTNAMES": "t1,t2"}) is None


def test_kubernetes_indexed_job():
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3"}
    with pytest.raises(RuntimeError, match="kubernetes"):
        resolve(environ=environ)
    setup = resolve(environ=environ, have_kubernetes=True)
    assert (setup.source, setup.process_id) == ("kubernetes", 3)
    # A plain pod (no indexed Job) runs alone.
    assert resolve(environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None


@pytest.mark.parametrize("environ, method, address", [
    (SLURM_TASK_5_OF_8, "slurm", "gpu017:"),
    (OMPI4_RANK_3_OF_4, "ompi", "10.96.0.1:"),
])
def test_jax_detector_completes_the_setup(environ, method, address):
    """The detector we pin exists in the installed JAX and finds a coordinator in that env."""
    from jax._src import clusters
    setup = resolve(environ=environ)
    with mock.patch.dict(os.environ, environ, clear=True):
        coordinator, count, rank, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            setup.coordinator_address, setup.num_processes, setup.process_id,
            setup.local_device_ids, setup.cluster_detection_method, 10)
    assert setup.cluster_detection_method == method
    assert coordinator.startswith(address)
    assert (count, rank) == (setup.num_processes, setup.process_id)


def test_initialize_without_a_launcher_does_nothing(monkeypatch):
    import jax
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR", "KUBERNETES_",
                            "JOB_COMPLETION")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(distributed, "_running_in_tpu_vm", lambda: False)
    assert distributed.initialize() is False
    assert not jax.distributed.is_initialized()
    assert distributed.is_main_process()
    assert distributed.describe().startswith("process 0/1: ")


_TWO_PROCESS_PROGRAM = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mantra_jax.train import distributed

    flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
    joined = distributed.initialize(flags["coordinator_address"], int(flags["num_processes"]),
                                    int(flags["process_id"]), initialization_timeout_s=60)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rank = jax.process_index()
    # Each process holds its own slice of a global batch; the sum crosses processes.
    local = np.array([rank + 1.0, 10.0 * (rank + 1)], np.float32)
    batch = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(batch)
    print("RESULT", joined, batch.shape, float(total.addressable_data(0)),
          distributed.is_main_process(), distributed.describe(), flush=True)
""")


def test_two_cpu_processes_sum_across_processes(tmp_path):
    """A real two-process run through launch/local.py: gloo collectives over loopback."""
    (tmp_path / "two_process_sum.py").write_text(_TWO_PROCESS_PROGRAM)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    for name in list(env):
        if name.startswith(("SLURM_", "OMPI_")) or name == "XLA_FLAGS":
            del env[name]
    result = subprocess.run(
        [sys.executable, str(REPO / "launch" / "local.py"), "--num_processes=2",
         "two_process_sum"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = sorted(line for line in result.stdout.splitlines() if "RESULT" in line)
    assert len(lines) == 2, result.stdout
    # Global batch: [1, 10] from process 0 and [2, 20] from process 1.
    expected_total = (1.0 + 10.0) + (2.0 + 20.0)
    for rank, line in enumerate(lines):
        assert line.startswith(f"[{rank}] RESULT True (4,) {expected_total} {rank == 0} "
                               f"process {rank}/2: 1 local of 2 global cpu devices"), line
