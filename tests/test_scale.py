"""Scaling features on 8 fake CPU devices: FSDP sharding, bfloat16, remat, gradient accumulation,
and the ahead-of-time memory check."""

import functools
import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from reenact_jax import input_pipeline, models, sharding, steps, trainer
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _batch(config):
  return next(iter(input_pipeline.make_train_dataset(config)))


def _train(config, batch, *, phases=(False,), devices=None):
  """One step per phase (default: one full phase-2 step, which runs every part of the model) on
  the config's mesh over `devices` (default all 8); returns (setup, state, list of metrics)."""
  setup = trainer.Setup(config, mesh=sharding.make_mesh(config.mesh, devices=devices))
  state = setup.init_state()
  global_batch = sharding.global_batch(batch, setup.mesh)
  history = []
  for warp_only in phases:
    state, metrics = setup.train_step(warp_only=warp_only)(state, global_batch, setup.perceptual[0])
    history.append(jax.tree.map(np.asarray, metrics))
  return setup, state, history


@functools.cache
def _plain_two_device_run():
  """The reference for bfloat16, remat and accumulation: tiny config, float32, 2 devices."""
  config = helpers.config_with()
  batch = _batch(config)
  return batch, _train(config, batch, devices=jax.devices()[:2])


def _params(state):
  return jax.tree.map(np.asarray, (state.generator_params, state.discriminator_params))


def _max_abs_difference(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_logical_rules_shard_the_first_divisible_dimension():
  rules = [('in_features', 'fsdp'), ('out_features', 'fsdp'), ('embed', 'fsdp')]
  mesh_shape = {'data': 2, 'fsdp': 4}
  conv = sharding.logical_axes('generator_params/renderer/enc1/conv1/kernel', 4)
  assert conv == (None, None, 'in_features', 'out_features')
  assert sharding.logical_to_spec(conv, (3, 3, 256, 512), rules, mesh_shape) == PartitionSpec(
    None, None, 'fsdp', None
  )
  # 6 input channels do not divide over 4 devices: the output channels take the axis.
  assert sharding.logical_to_spec(conv, (3, 3, 6, 512), rules, mesh_shape) == PartitionSpec(
    None, None, None, 'fsdp'
  )
  # The Adam moment of a parameter has the parameter's logical axes.
  query = sharding.logical_axes(
    'render_opt_state/1/0/mu/renderer/bottleneck/layer0/attention/query/kernel', 3
  )
  assert query == ('embed', 'heads', 'head_dim')
  # A size-1 fsdp axis (pure data parallelism) shards nothing.
  assert sharding.logical_to_spec(conv, (3, 3, 256, 512), rules, {'data': 8, 'fsdp': 1}) == (
    PartitionSpec(None, None, None, None)
  )


@pytest.mark.slow
def test_fsdp_matches_data_parallel_and_really_shards():
  overrides = {'mesh.fsdp_min_size': 1024}
  data_parallel = helpers.config_with(**{'mesh.data': 8, 'mesh.fsdp': 1, **overrides})
  fsdp = helpers.config_with(**{'mesh.data': 2, 'mesh.fsdp': 4, **overrides})
  batch = _batch(data_parallel)
  _, dp_state, dp_history = _train(data_parallel, batch)
  fsdp_setup, fsdp_state, fsdp_history = _train(fsdp, batch)

  for dp_metrics, fsdp_metrics in zip(dp_history, fsdp_history, strict=True):
    for key, value in dp_metrics.items():
      np.testing.assert_allclose(fsdp_metrics[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
  assert _max_abs_difference(_params(dp_state), _params(fsdp_state)) < 1e-4

  # The largest kernel, its Adam moments and its EMA are split over the 4 fsdp devices.
  kernels = {
    sharding.path_string(path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(fsdp_state.generator_params)
    if sharding.path_string(path).endswith('kernel')
  }
  name, kernel = max(kernels.items(), key=lambda item: item[1].size)
  assert 'fsdp' in kernel.sharding.spec, (name, kernel.sharding.spec)
  local = kernel.addressable_shards[0].data
  assert local.size * 4 == kernel.size, (name, kernel.shape, local.shape)
  part_state = (
    fsdp_state.warp_opt_state
    if name.split('/')[0] in models.WARP_PARTS
    else fsdp_state.render_opt_state
  )
  moment = part_state[1][0].mu
  for tree in (moment, fsdp_state.ema_params):
    leaf = dict(
      (sharding.path_string(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    )[name]
    assert leaf.sharding.spec == kernel.sharding.spec
  # Data parallelism keeps it whole on every device.
  dp_kernel = jax.tree_util.tree_leaves(dp_state.generator_params)[0]
  assert dp_kernel.sharding.is_fully_replicated
  del fsdp_setup


@pytest.mark.slow
def test_bfloat16_compute_trains_with_finite_losses():
  batch, (_, _, reference) = _plain_two_device_run()
  config = helpers.config_with(**{'model.compute_dtype': 'bfloat16'})
  setup, state, history = _train(config, batch, devices=jax.devices()[:2])
  for key, value in history[0].items():
    assert np.isfinite(value), key
  assert history[0]['loss/l1'] > 0 and history[0]['loss/disc'] > 0
  # Parameters stay float32; the convolutions really run in bfloat16.
  assert {leaf.dtype for leaf in jax.tree.leaves(state.generator_params)} == {jnp.dtype('float32')}
  hlo = setup.lower_train_step(warp_only=False).as_text()
  assert 'convolution' in hlo and 'bf16' in hlo
  # Close to the float32 step (bfloat16 keeps ~3 significant digits).
  for key in ('loss/total', 'loss/l1', 'loss/cyclic_warp'):
    np.testing.assert_allclose(history[0][key], reference[0][key], rtol=5e-2, err_msg=key)


@pytest.mark.slow
def test_remat_gives_the_same_step():
  batch, (plain_setup, plain, plain_history) = _plain_two_device_run()
  remat_config = helpers.config_with(**{'model.remat': True})
  remat_setup, remat, remat_history = _train(remat_config, batch, devices=jax.devices()[:2])
  for key, value in plain_history[0].items():
    np.testing.assert_allclose(remat_history[0][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  # Adam divides by the gradient's magnitude: on near-zero gradients (~1e-8) a rounding-level
  # difference moves a parameter by up to the learning rate (2e-4 here), not more.
  assert _max_abs_difference(_params(plain), _params(remat)) < 5e-4
  # Rematerialisation is really in the program (checkpointed blocks), and only with remat.
  jaxprs = [
    str(setup.train_step(warp_only=False).trace(state, setup.abstract_batch(8), None).jaxpr)
    for setup, state in ((plain_setup, plain), (remat_setup, remat))
  ]
  assert 'checkpoint' not in jaxprs[0] and 'remat' not in jaxprs[0]
  assert 'checkpoint' in jaxprs[1] or 'remat' in jaxprs[1]


def test_micro_batches_keep_each_device_its_examples():
  batch = {'x': jnp.arange(8)}
  micro = steps.split_micro_batches(batch, 2, None)['x']
  np.testing.assert_array_equal(micro, [[0, 2, 4, 6], [1, 3, 5, 7]])


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch():
  batch, (_, _, one_history) = _plain_two_device_run()
  config = helpers.config_with(**{'train.grad_accum_steps': 2})
  _, _, accumulated_history = _train(config, batch, devices=jax.devices()[:2])
  # The mean of the micro-batch means is the batch mean up to the masked-mean normalisation
  # (mask areas differ a little between the micro-batches); the discriminator's power
  # iteration runs once per micro-batch.
  for key in ('loss/total', 'loss/cyclic_warp', 'loss/l1', 'grad_norm/generator', 'loss/disc'):
    np.testing.assert_allclose(
      accumulated_history[0][key], one_history[0][key], rtol=2e-2, err_msg=key
    )
  with pytest.raises(ValueError, match='grad_accum_steps'):
    trainer.Setup(helpers.config_with(**{'train.grad_accum_steps': 3}))


@pytest.mark.slow
def test_aot_check_reports_memory_for_a_mesh():
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.aot_check',
      '--config=configs/tiny.py',
      '--mesh=data:2,fsdp:2',
      '--batch_per_device=2',
      '--config.mesh.fsdp_min_size=1024',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [line['phase'] for line in lines] == [1, 2]
  for line in lines:
    assert line['mesh'] == {'data': 2, 'fsdp': 2} and line['batch_size'] == 8
    assert line['peak_bytes_per_device'] > line['argument_bytes'] > 0
    assert line['flops_per_step'] == line['flops_per_device'] * 4 > 0
  assert lines[1]['flops_per_device'] > lines[0]['flops_per_device']  # Phase 2 does more.

  bad = subprocess.run(
    [sys.executable, '-m', 'launch.aot_check', '--config=configs/tiny.py', '--mesh=model:2'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode != 0 and 'model:2' in bad.stderr


def _aot_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'launch.aot_check', '--config=configs/tiny.py', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.slow
@pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is not None, reason='libtpu is installed here'
)
def test_aot_check_for_a_tpu_slice_says_how_to_get_libtpu():
  result = _aot_check('--tpu_topology=v4:2x2x1', timeout=120)
  assert result.returncode != 0
  assert 'pip install "libtpu==' in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is None,
  reason='needs libtpu (pip install "libtpu==0.0.42.*"): compiles for TPU without a TPU',
)
def test_aot_check_compiles_for_a_tpu_slice_without_tpus():
  result = _aot_check('--tpu_topology=v5e:2x2', '--batch_per_device=2')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [line['phase'] for line in lines] == [1, 2]
  for line in lines:
    assert line['platform'] == 'tpu' and 'v5' in line['device_kind']
    assert line['mesh'] == {'data': 4, 'fsdp': 1} and line['batch_size'] == 8
    assert line['flops_per_device'] > 0 and line['peak_bytes_per_device'] > line['argument_bytes']

  wrong = _aot_check('--tpu_topology=v4:3x7x1', timeout=300)
  assert wrong.returncode != 0 and 'v4:3x7x1' in wrong.stderr
