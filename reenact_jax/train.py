r"""Train a reenactment model.

  python -m reenact_jax.train --config=configs/vox256.py --workdir=DIR [--config.KEY=VALUE ...]

Rerunning the same command resumes from the newest checkpoint in DIR. Any config key can be
overridden on the command line; a key that does not exist is an error. On a multi-host TPU pod
or GPU cluster, run the same command on every host (see launch/).
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Importing these creates no JAX backend, so jax.distributed.initialize still runs first (main).
from reenact_jax import checkpointing, cli, distributed, trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, metrics.')
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'on', 'off'],
  'Call jax.distributed.initialize(): auto = when a coordinator is given or a cluster '
  'environment (SLURM srun, Open MPI, JAX_COORDINATOR_ADDRESS) is detected; a Cloud TPU pod '
  'is detected by JAX once this is on.',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0 (default: from the environment).'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')
_LOCAL_DEVICES = flags.DEFINE_list(
  'local_device_ids',
  None,
  'Accelerators this process drives (default: all of the host; under SLURM with one task per '
  "GPU, the task's local id).",
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # jax.distributed.initialize must run before anything else touches JAX.
  try:
    distributed.maybe_initialize(
      _DISTRIBUTED.value,
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      local_device_ids=[int(i) for i in _LOCAL_DEVICES.value] if _LOCAL_DEVICES.value else None,
    )
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  # A log handler that cannot write (a full disk) must not print its own traceback; the run
  # ends with one line that says what failed (trainer.WriteError).
  std_logging.raiseExceptions = False
  logging.info('Config:\n%s', _CONFIG.value)
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except trainer.Preempted as stop:
    logging.warning('%s Rerun the same command to resume.', stop)
  except trainer.WriteError as error:
    print(f'error: {error}', file=sys.stderr, flush=True)
    # The failed save's writer threads may still be failing (and printing) while the interpreter
    # shuts down; their tracebacks are in the log, so end the process here.
    sys.stdout.flush()
    os._exit(1)
  except (
    trainer.NonFiniteError,
    trainer.ReplicaDivergenceError,
    checkpointing.IncompatibleCheckpointError,
    FileNotFoundError,
    ValueError,
  ) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
