"""Tests of the trilinear / bilinear samplers in reenact_jax.warp."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reenact_jax import warp

# Jitted once: eager op-by-op dispatch of the samplers is the slow part of these tests.
sample_3d = jax.jit(warp.sample_3d)
sample_2d = jax.jit(warp.sample_2d)
warp_3d = jax.jit(warp.warp_3d)
warp_2d = jax.jit(warp.warp_2d)


def _random(seed, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


@jax.jit
def _reference_3d(volume, coords):
  """jax.scipy.ndimage.map_coordinates(order=1, constant 0) per batch element and channel."""
  depth, height, width = volume.shape[1:4]
  size = jnp.array([width, height, depth], coords.dtype)
  index = ((coords + 1.0) * size - 1.0) / 2.0  # (x, y, z) continuous voxel indices

  def one(channel_volume, idx):
    return jax.scipy.ndimage.map_coordinates(
      channel_volume, [idx[..., 2], idx[..., 1], idx[..., 0]], order=1, mode='constant', cval=0.0
    )

  per_channel = jax.vmap(jax.vmap(one, in_axes=(0, None)), in_axes=(0, 0))
  return jnp.moveaxis(per_channel(jnp.moveaxis(volume, -1, 1), index), 1, -1)


def test_identity_grid_centres():
  grid = warp.identity_grid_3d(2, 3, 4)
  assert grid.shape == (2, 3, 4, 3)
  np.testing.assert_allclose(grid[0, 0, :, 0], [-0.75, -0.25, 0.25, 0.75])
  np.testing.assert_allclose(grid[0, :, 0, 1], [-2 / 3, 0.0, 2 / 3], atol=1e-6)
  np.testing.assert_allclose(grid[:, 0, 0, 2], [-0.5, 0.5])
  grid_2d = warp.identity_grid_2d(3, 4)
  np.testing.assert_allclose(grid_2d, grid[0, ..., :2])


def test_zero_flow_is_identity():
  volume = _random(0, (2, 3, 4, 5, 6))
  out = warp_3d(volume, jnp.zeros((2, 3, 4, 5, 3)))
  np.testing.assert_allclose(out, volume, atol=1e-6)
  image = _random(1, (2, 4, 5, 3))
  np.testing.assert_allclose(warp_2d(image, jnp.zeros((2, 4, 5, 2))), image, atol=1e-6)


@pytest.mark.parametrize('axis', [0, 1, 2])  # x, y, z
def test_one_voxel_flow_shifts_volume(axis):
  volume = _random(2, (1, 4, 5, 6, 3))
  depth, height, width = volume.shape[1:4]
  step = 2.0 / (width, height, depth)[axis]
  flow = jnp.zeros((1, depth, height, width, 3)).at[..., axis].set(step)
  out = warp_3d(volume, flow)
  # Output voxel i samples input voxel i + 1 along the axis; the last voxel reads outside: 0.
  array_axis = 3 - axis
  expected = jnp.roll(volume, -1, axis=array_axis)
  last = [slice(None)] * 5
  last[array_axis] = -1
  expected = expected.at[tuple(last)].set(0.0)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_half_voxel_flow_averages_neighbours_2d():
  image = _random(3, (1, 3, 4, 2))
  flow = jnp.zeros((1, 3, 4, 2)).at[..., 0].set(1.0 / 4)  # half a pixel in x
  out = warp_2d(image, flow)
  expected = 0.5 * (image[:, :, :-1] + image[:, :, 1:])
  np.testing.assert_allclose(out[:, :, :-1], expected, atol=1e-5)
  np.testing.assert_allclose(out[:, :, -1], 0.5 * image[:, :, -1], atol=1e-5)  # zero padding


def test_matches_map_coordinates_at_random_points():
  volume = _random(4, (2, 5, 6, 7, 3))
  # Includes points outside [-1, 1] to check the zero padding corner by corner.
  coords = jax.random.uniform(jax.random.PRNGKey(5), (2, 4, 5, 6, 3), minval=-1.2, maxval=1.2)
  np.testing.assert_allclose(sample_3d(volume, coords), _reference_3d(volume, coords), atol=1e-5)


def test_sample_2d_matches_map_coordinates():
  image = _random(6, (2, 6, 7, 3))
  coords = jax.random.uniform(jax.random.PRNGKey(7), (2, 5, 4, 2), minval=-1.2, maxval=1.2)
  index = ((coords + 1.0) * jnp.array([7.0, 6.0]) - 1.0) / 2.0
  reference = jax.vmap(
    lambda img, idx: jax.vmap(
      lambda channel: jax.scipy.ndimage.map_coordinates(
        channel, [idx[..., 1], idx[..., 0]], order=1, mode='constant'
      ),
      in_axes=-1,
      out_axes=-1,
    )(img)
  )(image, index)
  np.testing.assert_allclose(sample_2d(image, coords), reference, atol=1e-5)


def test_gradients_match_finite_differences():
  with jax.enable_x64(True):
    volume = _random(8, (1, 3, 4, 5, 2), jnp.float64)
    # Keep points away from voxel centres (where the trilinear gradient w.r.t. coords jumps).
    coords = jax.random.uniform(jax.random.PRNGKey(9), (1, 2, 3, 2, 3), jnp.float64, -1.1, 1.1)
    cotangent = _random(10, (1, 2, 3, 2, 2), jnp.float64)

    @jax.jit
    def loss(v, c):
      return jnp.sum(sample_3d(v, c) * cotangent)

    grad_volume, grad_coords = jax.grad(loss, argnums=(0, 1))(volume, coords)
    assert grad_volume.dtype == jnp.float64

    eps = 1e-6
    for name, array, grad, argnum in [
      ('volume', volume, grad_volume, 0),
      ('coords', coords, grad_coords, 1),
    ]:
      flat = np.asarray(array).reshape(-1)
      numeric = np.zeros_like(flat)
      for i in range(flat.size):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += eps
        minus[i] -= eps
        args_plus = [volume, coords]
        args_minus = [volume, coords]
        args_plus[argnum] = jnp.asarray(plus.reshape(array.shape))
        args_minus[argnum] = jnp.asarray(minus.reshape(array.shape))
        numeric[i] = (loss(*args_plus) - loss(*args_minus)) / (2 * eps)
      np.testing.assert_allclose(
        np.asarray(grad).reshape(-1), numeric, rtol=1e-6, atol=1e-8, err_msg=name
      )


def test_gradients_match_reference_sampler():
  volume = _random(11, (2, 3, 4, 5, 3))
  coords = jax.random.uniform(jax.random.PRNGKey(12), (2, 3, 3, 3, 3), minval=-1.2, maxval=1.2)
  cotangent = _random(13, (2, 3, 3, 3, 3))

  def loss(sampler):
    return lambda v, c: jnp.sum(sampler(v, c) * cotangent)

  ours = jax.jit(jax.grad(loss(warp.sample_3d), argnums=(0, 1)))(volume, coords)
  reference = jax.jit(jax.grad(loss(_reference_3d), argnums=(0, 1)))(volume, coords)
  np.testing.assert_allclose(ours[0], reference[0], atol=1e-5)
  np.testing.assert_allclose(ours[1], reference[1], atol=1e-4)


def test_bfloat16_volume_and_jit():
  volume = _random(14, (1, 2, 3, 4, 5))
  flow = 0.1 * _random(15, (1, 2, 3, 4, 3))
  out = warp_3d(volume.astype(jnp.bfloat16), flow.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), warp_3d(volume, flow), atol=0.05, rtol=0.05)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='coords'):
    warp.sample_3d(jnp.zeros((1, 2, 3, 4, 5)), jnp.zeros((1, 2, 3, 4, 2)))
  with pytest.raises(ValueError, match='flow'):
    warp.warp_3d(jnp.zeros((1, 2, 3, 4, 5)), jnp.zeros((1, 2, 3, 4)))


_SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from reenact_jax import warp
mesh = Mesh(np.array(jax.devices()), ('data',))
sharding = NamedSharding(mesh, PartitionSpec('data'))
volume = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 4, 4, 3))
flow = 0.2 * jax.random.normal(jax.random.PRNGKey(1), (4, 2, 4, 4, 3))
cotangent = jax.random.normal(jax.random.PRNGKey(2), (4, 2, 4, 4, 3))
def forward_backward(v, f):
  out, pull_back = jax.vjp(warp.warp_3d, v, f)
  return out, pull_back(cotangent)
expected = jax.jit(forward_backward)(volume, flow)
compiled = jax.jit(forward_backward).lower(
  jax.device_put(volume, sharding), jax.device_put(flow, sharding)).compile()
text = compiled.as_text()
for collective in ('all-gather', 'all-reduce', 'all-to-all', 'collective-permute'):
  assert collective not in text, collective
got = compiled(jax.device_put(volume, sharding), jax.device_put(flow, sharding))
for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
  np.testing.assert_allclose(a, b, atol=1e-5)
print('ok')
"""


def test_batch_sharded_warp_needs_no_communication():
  # Each example gathers only from its own volume: with the batch sharded over devices the
  # compiled forward and backward must not move any volume between devices.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  root = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
    [sys.executable, '-c', _SHARDED_SCRIPT], env=env, cwd=root, capture_output=True, text=True
  )
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-2000:]
