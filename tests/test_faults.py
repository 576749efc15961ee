"""Fault injection: what a long run meets (a corrupt newest checkpoint, a full disk, a crash
between a log line and the next checkpoint, kill -9, a mistyped flag) ends in one clear line or a
clean resume, and loses nothing that was saved before.

The fast tests run the tiny config in this process (sharing the session's compiled steps); the
ones that need a real process (kill -9, a real write error in orbax's asynchronous writer) are
marked slow. A corrupt shard record with and without data.skip_corrupt is covered in
test_input_pipeline.py and test_prepare.py.
"""

import errno
import json
import os
import pathlib
import random
import resource
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from reenact_jax import checkpointing, trainer
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(total_steps, **overrides):
  return helpers.config_with(
    **{
      'train.total_steps': total_steps,
      'train.checkpoint_every': 2,
      'train.log_every': 1,
      'train.max_to_keep': 5,
      'train.image_log_every': 0,
      **overrides,
    }
  )


def _state_at(workdir, setup, config):
  manager = checkpointing.make_manager(str(workdir), read_only=True)
  abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
  step = manager.latest_step()
  state, _ = checkpointing.restore(manager, step, abstract, config)
  manager.close()
  return step, jax.tree.map(np.asarray, state)


def _truncate(directory: pathlib.Path, pattern: str = '*') -> None:
  """Cut the checkpoint's files (matching `pattern`) to half their size, as a crash during a copy
  leaves them."""
  for path in directory.rglob(pattern):
    if path.is_file():
      os.truncate(path, path.stat().st_size // 2)


def _logged_steps(workdir):
  return [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').open()]


@pytest.mark.slow  # ~50 s: two short runs and a resume.
def test_a_truncated_newest_checkpoint_is_set_aside_and_the_one_before_resumes(
  tmp_path, tiny_setup, caplog
):
  straight = tmp_path / 'straight'
  trainer.train_and_evaluate(_config(6), str(straight), setup=tiny_setup)
  crashed = tmp_path / 'crashed'
  trainer.train_and_evaluate(_config(4), str(crashed), setup=tiny_setup)
  # Only the arrays' data files: config and metadata still read, so the restore itself fails.
  _truncate(crashed / 'checkpoints' / '4' / 'state', 'd/*')

  with caplog.at_level('WARNING'):
    trainer.train_and_evaluate(_config(6), str(crashed), setup=tiny_setup)

  assert 'checkpoint at step 4' in caplog.text and 'cannot be read' in caplog.text
  aside = crashed / 'corrupt_checkpoints' / '4'
  assert aside.is_dir() and any(aside.rglob('*'))  # Moved, not deleted.
  step_a, state_a = _state_at(straight, tiny_setup, _config(6))
  step_b, state_b = _state_at(crashed, tiny_setup, _config(6))
  assert step_a == step_b == 6
  for leaf_a, leaf_b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(leaf_a, leaf_b)
  # The metrics of steps 3-4 logged by the crashed run are dropped once, not repeated.
  assert _logged_steps(crashed) == [1, 2, 3, 4, 5, 6]
  assert 'dropped 2 line(s)' in caplog.text


def test_when_no_checkpoint_restores_the_run_stops_and_keeps_them(tmp_path, tiny_setup):
  trainer.train_and_evaluate(_config(4), str(tmp_path), setup=tiny_setup)
  for step in ('2', '4'):
    _truncate(tmp_path / 'checkpoints' / step)
  (tmp_path / 'corrupt_checkpoints' / '4').mkdir(parents=True)  # Set aside by an earlier run.
  with pytest.raises(checkpointing.CorruptCheckpointError, match='No checkpoint in .* restores'):
    trainer.train_and_evaluate(_config(6), str(tmp_path), setup=tiny_setup)
  assert sorted(p.name for p in (tmp_path / 'corrupt_checkpoints').iterdir()) == ['2', '4', '4.1']
  assert not any((tmp_path / 'corrupt_checkpoints' / '4').iterdir())  # Nothing overwritten.


def test_another_model_is_refused_and_not_moved_aside(tmp_path, tiny_setup):
  trainer.train_and_evaluate(_config(2), str(tmp_path), setup=tiny_setup)
  other = _config(4, **{'model.volume_channels': 8})
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match='model.volume_channels'):
    trainer.train_and_evaluate(other, str(tmp_path))
  assert (tmp_path / 'checkpoints' / '2').is_dir()
  assert not (tmp_path / 'corrupt_checkpoints').exists()


def test_arrays_of_another_shape_under_the_same_config_are_refused_not_set_aside(tmp_path):
  config = _config(2)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
  checkpointing.save(manager, 1, {'a': np.zeros(6, np.float32)}, {}, config)
  manager.wait_until_finished()
  other = {'a': jax.ShapeDtypeStruct((5,), np.float32, sharding=device)}
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match='arrays that differ: a'):
    checkpointing.restore_or_init(manager, config, other, lambda: None)
  manager.close()
  assert (tmp_path / 'checkpoints' / '1').is_dir()
  assert not (tmp_path / 'corrupt_checkpoints').exists()


@pytest.mark.slow  # ~25 s: a short run and a save into a full disk.
def test_a_full_disk_while_saving_names_the_last_good_checkpoint(tmp_path, tiny_setup, monkeypatch):
  save = checkpointing.save

  def no_space_at_step_4(manager, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return save(manager, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing, 'save', no_space_at_step_4)
  with pytest.raises(trainer.WriteError) as raised:
    trainer.train_and_evaluate(_config(6), str(tmp_path), setup=tiny_setup)
  message = str(raised.value)
  assert '\n' not in message and 'No space left on device' in message
  assert f'last good checkpoint is step 2 ({tmp_path / "checkpoints" / "2"})' in message
  monkeypatch.setattr(checkpointing, 'save', save)
  # What was saved before is intact: rerunning the same command resumes from it and finishes.
  trainer.train_and_evaluate(_config(6), str(tmp_path), setup=tiny_setup)
  assert _state_at(tmp_path, tiny_setup, _config(6))[0] == 6
  assert _logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_metrics_after_the_restored_step_and_a_cut_off_line_are_dropped(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps({'step': step, 'loss/total': 1.0}) for step in range(1, 7)]
  path.write_text('\n'.join(lines) + '\n{"step": 7, "loss/to')
  assert trainer.truncate_metrics(path, 4) == 3
  assert [json.loads(line)['step'] for line in path.open()] == [1, 2, 3, 4]
  assert trainer.truncate_metrics(path, 4) == 0  # Once.


# Every command, with a flag it does not have; the ones with a config, with a mistyped key too.
COMMANDS = {
  'reenact_jax.train': ['--config=configs/tiny.py', '--workdir=/nonexistent/run'],
  'reenact_jax.benchmark': ['--config=configs/tiny.py'],
  'reenact_jax.demo': ['--config=configs/demo.py'],
  'reenact_jax.evaluate': ['--workdir=/nonexistent/run'],
  'reenact_jax.reenact': ['--workdir=/nonexistent/run'],
  'reenact_jax.export': ['--workdir=/nonexistent/run'],
  'reenact_jax.convert_vgg': [],
  'data.prepare': [],
  'data.mediapipe_models': [],
  'data.make_topology': [],
}
WITH_CONFIG = ('reenact_jax.train', 'reenact_jax.benchmark', 'reenact_jax.demo')


@pytest.mark.slow  # ~30 s: a start of every command.
def test_flag_and_config_errors_are_one_line_with_exit_code_2_in_every_command():
  # (command, arguments, what the line must name)
  cases = [
    (module, [*args, '--no_such_flag=1'], 'no_such_flag') for module, args in COMMANDS.items()
  ]
  cases += [(module, [*COMMANDS[module], '--config.trian.lr=1'], 'trian') for module in WITH_CONFIG]
  cases += [
    ('reenact_jax.train', ['--config=configs/missing.py', '--workdir=/tmp/x'], 'missing.py')
  ]
  processes = [
    (
      module,
      args,
      named,
      subprocess.Popen(
        [sys.executable, '-m', module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      ),
    )
    for module, args, named in cases
  ]
  for module, args, named, process in processes:
    _, stderr = process.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 2, (module, args, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), (module, args, stderr[-2000:])
    assert named in lines[0], (module, lines[0])
    if named == 'trian':  # The nearest key is suggested.
      assert lines[0] == 'error: no config key \'trian\' Did you mean "train" instead of "trian"?'


def _train_command(workdir, total_steps):
  return [
    sys.executable,
    '-m',
    'reenact_jax.train',
    '--config=configs/tiny.py',
    f'--workdir={workdir}',
    f'--config.train.total_steps={total_steps}',
    '--config.train.checkpoint_every=2',
    '--config.train.log_every=1',
    '--config.train.image_log_every=0',
  ]


@pytest.mark.slow
def test_kill_9_after_the_first_checkpoint_then_resume_ends_as_an_uninterrupted_run(
  tmp_path, tiny_setup
):
  total = 12
  straight = subprocess.run(
    _train_command(tmp_path / 'straight', total), cwd=ROOT, capture_output=True, text=True
  )
  assert straight.returncode == 0, straight.stderr[-3000:]

  killed = tmp_path / 'killed'
  process = subprocess.Popen(
    _train_command(killed, total), cwd=ROOT, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
  )
  deadline = time.time() + 300
  while time.time() < deadline and not (killed / 'checkpoints' / '2').is_dir():
    assert process.poll() is None
    time.sleep(0.2)
  time.sleep(random.Random(0).uniform(0.0, 2.0))  # A point after the first checkpoint.
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL

  resumed = subprocess.run(_train_command(killed, total), cwd=ROOT, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Traceback' not in resumed.stderr
  config = _config(total)
  step_a, state_a = _state_at(tmp_path / 'straight', tiny_setup, config)
  step_b, state_b = _state_at(killed, tiny_setup, config)
  assert step_a == step_b == total
  for leaf_a, leaf_b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(leaf_a, leaf_b)
  assert _logged_steps(killed) == list(range(1, total + 1))


def _limit_file_size():
  # Any file written past 256 KiB fails with EFBIG (a full disk, as far as the writer can tell);
  # SIGXFSZ would kill the process instead.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, 1 << 18))


@pytest.mark.slow
def test_a_write_error_in_the_asynchronous_checkpoint_writer_is_one_line(tmp_path):
  # The tiny model's largest checkpoint file is over the limit, its logs and metrics are not; the
  # compilation cache is kept out of the workdir (its entries are large too).
  command = _train_command(tmp_path, 4) + ['--config.train.compilation_cache_dir=none']
  result = subprocess.run(
    command, cwd=ROOT, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=600
  )
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert (
    len(lines) == 1
    and 'Could not save to' in lines[0]
    and 'last good checkpoint is none' in (lines[0])
  ), result.stderr[-3000:]
  assert 'Traceback' in (tmp_path / 'train.0.log').read_text()  # The details are in the log.


@pytest.mark.slow
def test_sigterm_while_a_checkpoint_is_being_written_saves_and_resumes(tmp_path, tiny_setup):
  process = subprocess.Popen(
    _train_command(tmp_path, 100000), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  checkpoints = tmp_path / 'checkpoints'
  deadline = time.time() + 300
  # The first asynchronous save is under way: its temporary directory exists.
  saving = False
  while time.time() < deadline and not saving:
    assert process.poll() is None
    saving = checkpoints.is_dir() and any('tmp' in p.name for p in checkpoints.iterdir())
    time.sleep(0.01)
  assert saving, 'no checkpoint was seen being written'
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  stderr = stderr.decode()
  assert process.returncode == 0, stderr[-3000:]
  assert 'Traceback' not in stderr
  step, state = _state_at(tmp_path, tiny_setup, _config(100000))
  assert step >= 2 and int(state.step) == step
  assert not any('tmp' in p.name for p in checkpoints.iterdir())
