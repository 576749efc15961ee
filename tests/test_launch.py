"""The launch scripts build the right commands (run with stand-ins for gcloud and srun)."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fake_command(bin_dir: pathlib.Path, name: str, log: pathlib.Path) -> None:
  """An executable `name` on PATH that appends its arguments (one per line) to `log`."""
  script = bin_dir / name
  script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "{name}" "$@" "--" >> {log}\n')
  script.chmod(0o755)


def test_tpu_pod_ships_code_and_runs_the_same_command_on_every_worker(tmp_path):
  log = tmp_path / 'calls.log'
  _fake_command(tmp_path, 'gcloud', log)
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}')
  result = subprocess.run(
    [
      'bash',
      'launch/tpu_pod.sh',
      '--tpu=pod',
      '--zone=us-central2-b',
      '--config=configs/vox256.py',
      '--workdir=gs://bucket/run',
      '--config.train.batch_size=256',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  calls = [call.strip().splitlines() for call in log.read_text().split('--\n') if call.strip()]
  assert [call[:5] for call in calls] == [
    ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe'],
    ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'],
    ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'],
  ]
  assert '--worker=all' in calls[1] and '--worker=all' in calls[2]
  remote = '\n'.join(calls[2])
  assert 'make setup ACCELERATOR=tpu' in remote
  assert (
    'python -m reenact_jax.train --config=configs/vox256.py --workdir=gs://bucket/run '
    '--distributed=on --config.train.batch_size=256' in remote
  )

  missing = subprocess.run(
    ['bash', 'launch/tpu_pod.sh', '--tpu=pod', '--config=configs/vox256.py'],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert missing.returncode == 2 and 'missing --zone' in missing.stderr


def test_gpu_slurm_gives_a_per_node_process_all_gpus(tmp_path):
  log = tmp_path / 'calls.log'
  _fake_command(tmp_path, 'srun', log)
  env = dict(
    os.environ,
    PATH=f'{tmp_path}:{os.environ["PATH"]}',
    SLURM_SUBMIT_DIR=str(ROOT),
    SLURM_NTASKS_PER_NODE='1',
    SLURM_GPUS_ON_NODE='4',
  )
  command = [
    'bash',
    'launch/gpu_slurm.sbatch',
    'configs/vox256.py',
    '/shared/run',
    '--config.seed=1',
  ]
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  call = log.read_text().splitlines()
  assert call[0] == 'srun' and '--distributed=on' in call
  assert '--local_device_ids=0,1,2,3' in call and call[-2] == '--config.seed=1'

  log.unlink()
  env['SLURM_NTASKS_PER_NODE'] = '4'  # One process per GPU: JAX picks the GPU.
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert not any(arg.startswith('--local_device_ids') for arg in log.read_text().splitlines())


def test_distributed_start_up_is_off_alone_and_needs_a_complete_address(monkeypatch):
  from reenact_jax import distributed

  for name in distributed._CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  assert distributed.maybe_initialize('auto') is False  # One process, nothing to join.
  assert distributed.maybe_initialize('off', coordinator_address='10.0.0.1:1234') is False
  with pytest.raises(ValueError, match='num_processes'):
    distributed.maybe_initialize('on', coordinator_address='10.0.0.1:1234')
