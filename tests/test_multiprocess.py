"""Two processes on 127.0.0.1 train together, as hosts of a pod would (gloo collectives on CPU)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from reenact_jax import trainer
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def test_two_processes_train_and_checkpoint(tmp_path):
  port = _free_port()
  processes = []
  for process_id in range(2):
    env = dict(
      os.environ,
      XLA_FLAGS='--xla_force_host_platform_device_count=2',
      JAX_PLATFORMS='cpu',
      JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
      JAX_NUM_PROCESSES='2',
      JAX_PROCESS_ID=str(process_id),
    )
    command = [
      sys.executable,
      '-m',
      'reenact_jax.train',
      '--config=configs/tiny.py',
      f'--workdir={tmp_path}',
      '--distributed=on',
      '--config.train.total_steps=3',
      '--config.train.log_every=1',
      '--config.train.checkpoint_every=3',
      '--config.train.image_log_every=3',
    ]
    processes.append(
      subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    )
  outputs = [process.communicate(timeout=900)[1] for process in processes]
  for process, stderr in zip(processes, outputs, strict=True):
    assert process.returncode == 0, stderr[-4000:]

  # Process 0 writes the logs; both processes wrote their part of one checkpoint.
  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').open()]
  assert [line['step'] for line in lines] == [1, 2, 3]
  assert all(line['loss/total'] > 0 for line in lines)
  assert (tmp_path / 'checkpoints' / '3').is_dir()
  assert (tmp_path / 'train.0.log').exists() and (tmp_path / 'train.1.log').exists()
  log = (tmp_path / 'train.0.log').read_text()
  assert "'data': 4" in log and '2 processes' in log, log[-2000:]

  # Each process read its own half of every global batch, so the two processes trained on the
  # same examples as one process does: the first step (same initial parameters) has the same
  # losses up to reduction order. (Later steps drift by Adam-amplified rounding, ~lr.)
  single = tmp_path.parent / (tmp_path.name + '_single')
  config = helpers.config_with(
    **{'train.total_steps': 3, 'train.log_every': 1, 'train.image_log_every': 0}
  )
  trainer.train_and_evaluate(config, str(single))
  single_lines = [json.loads(line) for line in (single / 'metrics.jsonl').open()]
  for key in ('loss/total', 'loss/cyclic_warp', 'loss/l1', 'grad_norm/generator'):
    np.testing.assert_allclose(lines[0][key], single_lines[0][key], rtol=1e-4, err_msg=key)
  for two, one in zip(lines, single_lines, strict=True):
    np.testing.assert_allclose(two['loss/total'], one['loss/total'], rtol=1e-2)
