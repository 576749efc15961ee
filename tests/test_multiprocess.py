"""Two processes on 127.0.0.1 train together, as hosts of a pod would (gloo collectives on CPU)."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from reenact_jax import checkpointing, trainer
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


@pytest.mark.slow
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

  # Process 0 writes the metrics; both processes wrote their part of one checkpoint.
  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').open()]
  assert [line['step'] for line in lines] == [1, 2, 3]
  assert all(line['loss/total'] > 0 for line in lines)
  assert (tmp_path / 'checkpoints' / '3').is_dir()
  logs = [(tmp_path / f'train.{index}.log').read_text() for index in range(2)]
  assert "'data': 4" in logs[0] and '2 processes' in logs[0], logs[0][-2000:]
  assert 'Process 1 of 2' in logs[1] and '4 global devices' in logs[1], logs[1][-2000:]
  # Both processes ended with identical parameters (checked across processes by the trainer).
  fingerprints = [
    re.search(r'Step 3: parameters identical on all 2 processes \(fingerprint (\S+)\)', log)
    for log in logs
  ]
  assert all(fingerprints), logs[0][-2000:]
  assert fingerprints[0].group(1) == fingerprints[1].group(1)

  # Each process read its own half of every global batch, so the two processes trained on the
  # same examples as one process does: same first-step losses up to reduction order.
  config = helpers.config_with(
    **{
      'train.total_steps': 4,
      'train.log_every': 1,
      'train.checkpoint_every': 1,
      'train.image_log_every': 0,
    }
  )
  single = tmp_path.parent / (tmp_path.name + '_single')
  trainer.train_and_evaluate(config, str(single))
  single_lines = [json.loads(line) for line in (single / 'metrics.jsonl').open()]
  for key in ('loss/total', 'loss/cyclic_warp', 'loss/l1', 'grad_norm/generator'):
    np.testing.assert_allclose(lines[0][key], single_lines[0][key], rtol=1e-4, err_msg=key)

  # The 2-process checkpoint restores in this single process onto another mesh (8 devices,
  # parameters sharded 4 ways) and holds what the single process trained in 3 steps. Adam
  # turns rounding-level differences of near-zero gradients into steps of up to the learning
  # rate, so compare the whole update (a wrong batch or reduction would differ by ~100%).
  fsdp = helpers.config_with(**{'mesh.data': 2, 'mesh.fsdp': 4, 'mesh.fsdp_min_size': 1024})
  setup = trainer.Setup(fsdp)
  initial = _flat(setup.init_state().generator_params)
  abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
  restored = {}
  for name, workdir in (('two', tmp_path), ('single', single)):
    manager = checkpointing.make_manager(str(workdir), max_to_keep=2)
    restored[name] = checkpointing.restore(manager, 3, abstract, fsdp)
    manager.close()
  two_state, data_state = restored['two']
  assert data_state == {'next_index': 3}  # Batches consumed: the same for any process count.
  assert any('fsdp' in leaf.sharding.spec for leaf in jax.tree.leaves(two_state))
  two_update = _flat(two_state.generator_params) - initial
  single_update = _flat(restored['single'][0].generator_params) - initial
  relative = np.linalg.norm(two_update - single_update) / np.linalg.norm(single_update)
  assert relative < 0.05, relative

  # Resuming the 2-process run in one process continues the same data stream: its step 4 is
  # the single run's step 4.
  trainer.train_and_evaluate(config, str(tmp_path))
  resumed = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').open()]
  assert resumed[-1]['step'] == 4
  for key in ('loss/total', 'loss/l1'):
    np.testing.assert_allclose(resumed[-1][key], single_lines[3][key], rtol=1e-2, err_msg=key)


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)])
