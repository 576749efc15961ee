"""Multi-host start-up: jax.distributed.initialize before any other JAX call.

Where the process learns its place in the job, in order:
  1. explicit values (`--coordinator_address --num_processes --process_id` of the train CLI);
  2. JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID in the environment (how
     launch/local_multiprocess.sh and the tests run several CPU processes on 127.0.0.1);
  3. the cluster, detected by JAX itself: a Cloud TPU VM slice (metadata server), SLURM
     (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID, coordinator = first node of the step), Open MPI,
     Kubernetes.
"""

import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

# Environment variables that mean "this process is one of several". A Cloud TPU pod is not
# visible in the environment (JAX asks the metadata server): its launcher passes mode='on'.
_CLUSTER_VARIABLES = (
  'JAX_COORDINATOR_ADDRESS',
  'SLURM_STEP_NODELIST',  # Inside `srun` (a bare `sbatch` shell is one process).
  'OMPI_COMM_WORLD_SIZE',
  'TPU_WORKER_HOSTNAMES',
)


def cluster_detected() -> bool:
  return any(os.environ.get(name) for name in _CLUSTER_VARIABLES)


def maybe_initialize(
  mode: str = 'auto',
  *,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | None = None,
) -> bool:
  """mode 'on' always initialises, 'off' never, 'auto' when given a coordinator or a cluster
  is detected. Returns whether jax.distributed was initialised. Call before any other JAX use.
  """
  if mode == 'off':
    return False
  if mode == 'auto' and not (coordinator_address or cluster_detected()):
    return False
  environment = os.environ
  if coordinator_address is None and environment.get('JAX_COORDINATOR_ADDRESS'):
    coordinator_address = environment['JAX_COORDINATOR_ADDRESS']
    if num_processes is None and environment.get('JAX_NUM_PROCESSES'):
      num_processes = int(environment['JAX_NUM_PROCESSES'])
    if process_id is None and environment.get('JAX_PROCESS_ID'):
      process_id = int(environment['JAX_PROCESS_ID'])
  if coordinator_address and (num_processes is None or process_id is None):
    raise ValueError(
      f'A coordinator address ({coordinator_address}) needs --num_processes and --process_id '
      '(or JAX_NUM_PROCESSES and JAX_PROCESS_ID) too.'
    )
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    local_device_ids=list(local_device_ids) if local_device_ids else None,
  )
  return True


def log_topology() -> None:
  """One line per process: who it is, which devices it drives, how many there are in all."""
  local = jax.local_devices()
  logging.info(
    'Process %d of %d on %s: %d local devices %s; %d global devices (%s).',
    jax.process_index(),
    jax.process_count(),
    os.uname().nodename,
    len(local),
    [device.id for device in local],
    jax.device_count(),
    local[0].device_kind if local else 'none',
  )


def all_processes_agree(value: bool) -> bool:
  """True when `value` is true on every process (a host-side all-gather; `value` itself with
  one process)."""
  if jax.process_count() == 1:
    return bool(value)
  return bool(np.all(multihost_utils.process_allgather(np.asarray(value, np.bool_))))


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Wait until every process reaches `name` (no-op with one process).

  Uses the coordination service (timeout `timeout_s`), not a device collective: CPU collectives
  (gloo) give up after 30 s, less than hosts may differ in compile time.
  """
  if jax.process_count() == 1:
    return
  jax_distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
