"""Joining a multi-process (multi-host) JAX run: who launched us, and `jax.distributed` set-up.

A trainer calls `initialize(...)` once, before any JAX computation. Explicit arguments (the
trainers' `--coordinator_address/--num_processes/--process_id` flags) win; otherwise the launcher
is recognised from the environment:

- Open MPI (`mpirun`): `OMPI_COMM_WORLD_SIZE` > 1. Open MPI 4 publishes the launcher's address
  (`OMPI_MCA_orte_hnp_uri`), which JAX turns into a coordinator address; Open MPI 5 does not, so
  there the coordinator comes from `JAX_COORDINATOR_ADDRESS` or `mpi4py`.
- SLURM (`srun`): `SLURM_JOB_ID` with `SLURM_NTASKS` > 1, inside a job step.
- Cloud TPU VMs (pod slices, GCE or GKE): JAX reads the worker list from the TPU metadata.
- Kubernetes indexed Jobs (`JOB_COMPLETION_INDEX`), through the `kubernetes` package.
- Anything else: a single process; nothing is initialised.

The decision is the pure function `resolve_setup`, which takes the environment as a mapping so
that every branch is testable without a cluster; `initialize` applies it. JAX's own detection
(`jax._src.clusters`) still derives the coordinator address where it can; this module pins which
detector runs, catches the cases JAX would get wrong or report obscurely (a multi-task SLURM
allocation entered without `srun`, Open MPI 5, Kubernetes without its client package), and picks
each process's GPUs from `CUDA_VISIBLE_DEVICES` so that one task per GPU, one task per node, and
SLURM's per-task GPU binding all work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence

import jax

logger = logging.getLogger(__name__)

# Environment variables through which schedulers restrict a process to some accelerators; the
# first one present decides how many devices this process can see.
_VISIBLE_DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
# Values SLURM and users put there to mean "no accelerator".
_NO_VISIBLE_DEVICES = ("", "NoDevFiles", "-1", "none")


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
    """The arguments with which this process joins a multi-process run.

    Fields left None are filled in by JAX's cluster detector named by `cluster_detection_method`
    (None lets JAX try its detectors in its own order; "deactivate" forbids detection).
    """

    source: str  # "explicit", "ompi", "slurm", "mpi4py", "tpu" or "kubernetes"
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None
    cluster_detection_method: str | None


def _unset_address(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _unset_count(value: int | None) -> int | None:
    # absl integer flags cannot hold None cleanly, so 0 (processes) and negative ids mean "unset".
    if value is None:
        return None
    value = int(value)
    return value if value > 0 else None


def _unset_index(value: int | None) -> int | None:
    if value is None:
        return None
    value = int(value)
    return value if value >= 0 else None


def parse_device_ids(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """`"0,1"`, `[0, 1]` or None -> a tuple of device ids (None or empty -> None)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        try:
            ids = tuple(int(part) for part in parts)
        except ValueError as error:
            raise ValueError(
                f"local device ids must be comma-separated integers, got {value!r}") from error
    else:
        ids = tuple(int(part) for part in value)
    return ids or None


def parse_slurm_tasks_per_node(value: str) -> list[int]:
    """Expands SLURM's compressed task counts, e.g. "4(x2),3" -> [4, 4, 3]."""
    counts: list[int] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if "(x" in item:
            count, repeat = item.split("(x", 1)
            counts.extend([int(count)] * int(repeat.rstrip(")")))
        else:
            counts.append(int(item))
    if not counts:
        raise ValueError(f"cannot parse a SLURM tasks-per-node value {value!r}")
    return counts


def visible_device_count(environ: Mapping[str, str]) -> int | None:
    """How many accelerators the scheduler left visible to this process (None: not restricted)."""
    for name in _VISIBLE_DEVICE_VARIABLES:
        if name in environ:
            value = environ[name].strip()
            if value in _NO_VISIBLE_DEVICES:
                return None
            return len([part for part in value.split(",") if part.strip()])
    return None


def local_device_ids_for(local_rank: int, local_size: int | None,
                         num_visible: int | None) -> tuple[int, ...] | None:
    """The devices (indices among the visible ones) that local process `local_rank` drives.

    JAX's own default under SLURM and Open MPI is `[local_rank]`, which assumes every process sees
    all of the node's GPUs and there is one process per GPU. That fails when the scheduler binds
    one GPU per task (each task sees a single device, index 0) or runs one task per node over
    several GPUs. Returns None where JAX's default is right or nothing is known.
    """
    if num_visible is None:
        return None
    if num_visible == 1:
        return (0,)
    if local_size is None or local_size < 1:
        return None
    if num_visible % local_size:
        return None
    per_process = num_visible // local_size
    first = local_rank * per_process
    return tuple(range(first, first + per_process))


def _int_from(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except KeyError:
        raise RuntimeError(f"environment variable {name} is not set") from None
    except ValueError:
        raise RuntimeError(
            f"environment variable {name}={environ[name]!r} is not an integer") from None


def _slurm_local_size(environ: Mapping[str, str]) -> int | None:
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if name in environ:
            counts = parse_slurm_tasks_per_node(environ[name])
            node = int(environ.get("SLURM_NODEID", "0"))
            return counts[node] if node < len(counts) else None
    if "SLURM_NTASKS_PER_NODE" in environ:
        return int(environ["SLURM_NTASKS_PER_NODE"])
    return None


def resolve_setup(coordinator_address: str | None = None,
                  num_processes: int | None = None,
                  process_id: int | None = None,
                  local_device_ids: str | Sequence[int] | None = None,
                  *,
                  environ: Mapping[str, str],
                  running_in_tpu_vm: bool = False,
                  have_mpi4py: bool = False,
                  have_kubernetes: bool = False) -> DistributedSetup | None:
    """Decides how this process joins a multi-process run; None means it runs alone.

    Args:
      coordinator_address: "host:port" of process 0's coordinator; None or "" means unset.
      num_processes: total process count; None or 0 means unset. Exactly 1 forces a single
        process whatever the environment says.
      process_id: this process's index; None or a negative number means unset.
      local_device_ids: the accelerators this process drives ("0,1" or a sequence); None lets the
        launcher's environment decide.
      environ: the process environment (`os.environ` in production, a dict in tests).
      running_in_tpu_vm: whether JAX found a Cloud TPU VM (JAX decides this on import).
      have_mpi4py, have_kubernetes: whether those packages are importable.

    Raises:
      ValueError: explicit arguments that are incomplete or inconsistent.
      RuntimeError: a recognised launcher whose environment cannot start a run.
    """
    coordinator_address = _unset_address(coordinator_address)
    num_processes = _unset_count(num_processes)
    process_id = _unset_index(process_id)
    device_ids = parse_device_ids(local_device_ids)
    if device_ids is None:
        device_ids = parse_device_ids(environ.get("JAX_LOCAL_DEVICE_IDS"))
    env_coordinator = _unset_address(environ.get("JAX_COORDINATOR_ADDRESS"))

    if num_processes == 1:
        if process_id not in (None, 0):
            raise ValueError(f"process_id={process_id} is out of range for num_processes=1")
        return None

    if coordinator_address and num_processes and process_id is not None:
        if process_id >= num_processes:
            raise ValueError(
                f"process_id={process_id} is out of range for num_processes={num_processes}")
        # Detection is switched off so that a stray scheduler environment (a local launch inside a
        # SLURM allocation, say) cannot override what the caller asked for.
        return DistributedSetup("explicit", coordinator_address, num_processes, process_id,
                                device_ids, "deactivate")

    ompi_size = int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or "1")
    if ompi_size > 1:
        rank = _int_from(environ, "OMPI_COMM_WORLD_RANK")
        local_rank = int(environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
        local_size = (int(environ["OMPI_COMM_WORLD_LOCAL_SIZE"])
                      if "OMPI_COMM_WORLD_LOCAL_SIZE" in environ else None)
        ids = device_ids or local_device_ids_for(local_rank, local_size,
                                                 visible_device_count(environ))
        common = dict(num_processes=num_processes or ompi_size,
                      process_id=process_id if process_id is not None else rank)
        address = coordinator_address or env_coordinator
        if "OMPI_MCA_orte_hnp_uri" in environ:
            return DistributedSetup("ompi", address, local_device_ids=ids,
                                    cluster_detection_method="ompi", **common)
        if address:
            return DistributedSetup("ompi", address, local_device_ids=ids or (local_rank,),
                                    cluster_detection_method="deactivate", **common)
        if have_mpi4py:
            return DistributedSetup("mpi4py", None, local_device_ids=ids,
                                    cluster_detection_method="mpi4py", **common)
        raise RuntimeError(
            f"an Open MPI run of {ompi_size} processes was detected (OMPI_COMM_WORLD_SIZE), but no "
            "coordinator address can be derived: Open MPI 5 no longer sets OMPI_MCA_orte_hnp_uri. "
            "Set JAX_COORDINATOR_ADDRESS=<host of rank 0>:<free port>, pass --coordinator_address, "
            "or install mpi4py.")

    slurm_tasks = int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")) or "1")
    if "SLURM_JOB_ID" in environ and slurm_tasks > 1:
        step_variables = ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
        if not all(name in environ for name in step_variables):
            raise RuntimeError(
                f"this SLURM allocation has {slurm_tasks} tasks (SLURM_NTASKS) but the process was "
                f"not started by srun (one of {', '.join(step_variables)} is missing). Start one "
                "task per GPU with `srun python -m ...` (see launch/slurm.sbatch), or pass "
                "--num_processes=1 to run alone.")
        local_rank = int(environ.get("SLURM_LOCALID", "0"))
        ids = device_ids or local_device_ids_for(local_rank, _slurm_local_size(environ),
                                                 visible_device_count(environ))
        return DistributedSetup(
            "slurm", coordinator_address or env_coordinator,
            num_processes or slurm_tasks,
            process_id if process_id is not None else _int_from(environ, "SLURM_PROCID"),
            ids, "slurm")

    if running_in_tpu_vm:
        hosts = environ.get("TPU_PROCESS_ADDRESSES", environ.get("TPU_WORKER_HOSTNAMES"))
        slices = int(environ.get("MEGASCALE_NUM_SLICES", "1") or "1")
        num_hosts = None if hosts is None else len([h for h in hosts.split(",") if h.strip()])
        if num_hosts == 1 and slices == 1:
            return None
        # On GCE the worker list lives in the VM metadata, which JAX queries itself; a single-host
        # VM then joins a one-process "cluster", which is harmless.
        return DistributedSetup("tpu", coordinator_address or env_coordinator, num_processes,
                                process_id, device_ids, None)

    if "KUBERNETES_SERVICE_HOST" in environ and "JOB_COMPLETION_INDEX" in environ:
        if not have_kubernetes:
            raise RuntimeError(
                "a Kubernetes indexed Job was detected (JOB_COMPLETION_INDEX) but the `kubernetes` "
                "package, which JAX uses to find the Job's pods, is not installed: `pip install "
                "kubernetes`, or pass --coordinator_address/--num_processes/--process_id.")
        return DistributedSetup(
            "kubernetes", coordinator_address or env_coordinator, num_processes,
            process_id if process_id is not None else _int_from(environ, "JOB_COMPLETION_INDEX"),
            device_ids, None)

    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    if any(value is not None for value in given.values()):
        missing = ", ".join(name for name, value in given.items() if value is None)
        raise ValueError(
            "a multi-process run needs coordinator_address, num_processes and process_id; "
            f"{missing} not given and no launcher (SLURM srun, Open MPI, Cloud TPU, Kubernetes) "
            "was detected")
    return None


def _running_in_tpu_vm() -> bool:
    try:
        # Set by JAX on import once it has found a Cloud TPU and libtpu; private, hence guarded.
        from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: str | Sequence[int] | None = None,
               *,
               initialization_timeout_s: int = 300) -> bool:
    """Joins the multi-process run this process was launched into, if any.

    Call once, before any JAX computation. Explicit arguments win over the environment; see
    `resolve_setup` for what is detected and what counts as unset. Returns True when
    `jax.distributed` is initialised (now or earlier), False for a single-process run.
    """
    if jax.distributed.is_initialized():
        return True
    setup = resolve_setup(
        coordinator_address, num_processes, process_id, local_device_ids,
        environ=os.environ,
        running_in_tpu_vm=_running_in_tpu_vm(),
        have_mpi4py=importlib.util.find_spec("mpi4py") is not None,
        have_kubernetes=importlib.util.find_spec("kubernetes") is not None)
    if setup is None:
        logger.info("single-process run: jax.distributed not initialised")
        return False

    # Cross-process collectives on the CPU backend need an implementation (gloo, over TCP, is
    # built into jaxlib); without one a multi-process CPU run fails at its first collective.
    # gloo is JAX 0.10's default, so this only acts where a configuration left it unset.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")

    logger.info("joining a multi-process run via %s: coordinator=%s processes=%s id=%s devices=%s",
                setup.source, setup.coordinator_address or "(detected)",
                setup.num_processes or "(detected)",
                setup.process_id if setup.process_id is not None else "(detected)",
                list(setup.local_device_ids) if setup.local_device_ids else "(default)")
    jax.distributed.initialize(
        coordinator_address=setup.coordinator_address,
        num_processes=setup.num_processes,
        process_id=setup.process_id,
        local_device_ids=list(setup.local_device_ids) if setup.local_device_ids else None,
        cluster_detection_method=setup.cluster_detection_method,
        initialization_timeout=initialization_timeout_s)
    return True


def is_main_process() -> bool:
    """True on the process that writes logs, reports and other single-writer outputs."""
    return jax.process_index() == 0


def describe() -> str:
    """One line saying which process this is and which devices it drives, for logs."""
    local = jax.local_devices()
    platform = local[0].platform if local else "no"
    return (f"process {jax.process_index()}/{jax.process_count()}: "
            f"{len(local)} local of {jax.device_count()} global {platform} devices")
