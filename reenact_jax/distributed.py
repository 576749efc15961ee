"""Multi-host start-up: jax.distributed.initialize before any other JAX call."""

import os

import jax
from absl import logging

# Environment variables that mean "this process is one of several" (TPU pods are detected by
# JAX itself through the TPU metadata; SLURM and explicit coordinators through these).
_CLUSTER_VARIABLES = ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES')


def maybe_initialize(mode: str = 'auto') -> None:
  """mode 'on' always initialises, 'off' never, 'auto' when a cluster is detected.

  With JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set, this also works for
  several processes on one machine (how the tests run 2 CPU processes on 127.0.0.1).
  """
  if mode == 'off':
    return
  if mode == 'auto' and not any(os.environ.get(name) for name in _CLUSTER_VARIABLES):
    return
  kwargs = {}
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    kwargs = dict(
      coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
      num_processes=int(os.environ['JAX_NUM_PROCESSES']),
      process_id=int(os.environ['JAX_PROCESS_ID']),
    )
  jax.distributed.initialize(**kwargs)
  logging.info('Process %d of %d.', jax.process_index(), jax.process_count())
