"""Joining a multi-process (multi-host) run: `jax.distributed.initialize` and its own detection.

A trainer calls `initialize(...)` once, before any JAX computation, with its flags
`--coordinator_address/--num_processes/--process_id`. When all three are given they are used as
they are; whatever is left unset JAX detects from the launcher's environment (SLURM `srun`, Open
MPI `mpirun`, Cloud TPU pod slices, Kubernetes indexed Jobs, `JAX_COORDINATOR_ADDRESS`,
`JAX_LOCAL_DEVICE_IDS`; see `jax.distributed.initialize`). Without flags and without a launcher
the process runs alone.
"""

from __future__ import annotations

import logging

import jax

logger = logging.getLogger(__name__)


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               *,
               initialization_timeout_s: int = 300) -> bool:
    """Joins the multi-process run this process was launched into, if any.

    None means unset. `num_processes=1` runs alone whatever the environment says. Returns True
    when `jax.distributed` is initialised (now or earlier), False for a single-process run.
    """
    if jax.distributed.is_initialized():
        return True
    if num_processes == 1:
        return False
    given = (coordinator_address, num_processes, process_id)
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id,
            # All three given: detection off, so that a stray launcher environment (a local run
            # inside a SLURM allocation, say) cannot override what the caller asked for.
            cluster_detection_method="deactivate" if None not in given else None,
            initialization_timeout=initialization_timeout_s)
    except ValueError as error:
        # JAX raises this before starting anything when no launcher gave it a coordinator.
        if given == (None, None, None) and "coordinator_address" in str(error):
            logger.info("no multi-process launcher detected: a single-process run")
            return False
        raise
    logger.info("joined a multi-process run: process %d of %d", jax.process_index(),
                jax.process_count())
    return True
