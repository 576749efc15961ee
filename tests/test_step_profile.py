"""The step profile: HLO instructions sorted into kinds, trace time summed by kind."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from reenact_jax import benchmarks, models, step_profile, trainer
from tests import helpers


def _conv_net():
  net = nn.Sequential([nn.Conv(16, (3, 3)), nn.relu, nn.Conv(16, (4, 4), strides=2)])
  images = jnp.ones((2, 32, 32, 8))
  params = net.init(jax.random.PRNGKey(0), images)

  def loss(params, images):
    return jnp.sum(net.apply(params, images) ** 2)

  return loss, params, images


@pytest.mark.parametrize(
  'argnums, weight_grads', [(None, False), (1, False), ((0, 1), True), (0, True)]
)
def test_weight_gradients_are_found_only_where_the_kernels_are_differentiated(
  argnums, weight_grads
):
  loss, params, images = _conv_net()
  fn = loss if argnums is None else jax.grad(loss, argnums=argnums)
  compiled = jax.jit(fn).lower(params, images).compile()
  kinds = set(step_profile.hlo_kinds(compiled.as_text()).values())
  assert ('conv2d_weight_grad' in kinds) == weight_grads
  assert 'conv2d' in kinds  # The forward convolutions, in every program.
  profile = step_profile.profile_kinds(lambda: compiled(params, images), compiled.as_text())
  assert (profile['conv2d_weight_grad_ms'] > 0) == weight_grads
  assert profile['wall_ms'] > 0 and profile['unattributed_ms'] >= 0
  expected = {f'{kind}_ms' for kind in step_profile.KINDS} | {'wall_ms', 'unattributed_ms'}
  assert set(profile) == expected


def test_a_convolution_is_a_weight_gradient_when_its_window_spans_the_image():
  forward = (
    '%c = f32[2,64,64,32]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}, '
    'dim_labels=b01f_01io->b01f'
  )
  kernel = (
    '%c = f32[16,3,3,32]{3,2,1,0} convolution(%a, %b), window={size=64x64 pad=1_1x1_1}, '
    'dim_labels=b01f_01io->b01f'
  )
  volume = (
    '%c = f32[3,3,3,8,16]{4,3,2,1,0} convolution(%a, %b), window={size=16x16x16 pad=1_1x1_1x1_1}'
    ', dim_labels=f012b_i012o->012bf'
  )
  assert step_profile.convolution_kind(forward) == 'conv2d'
  assert step_profile.convolution_kind(kernel) == 'conv2d_weight_grad'
  assert step_profile.convolution_kind(volume) == 'conv3d'


def test_the_generator_parts_are_recorded_with_the_shapes_of_the_forward_pass():
  config = helpers.config_with()
  generator = models.make_generator(config.model, config.image_size)
  params = jax.eval_shape(lambda: models.init_params(generator, jax.random.PRNGKey(0)))
  example = {
    name: value
    for name, value in trainer.example_batch(generator, 2).items()
    if name in models.INPUT_NAMES
  }
  calls = benchmarks._generator_part_calls(generator, params, example)
  assert tuple(calls) == benchmarks.GENERATOR_PARTS
  size = config.image_size
  assert calls['encoder'][1][0].shape == (2, size, size, 3)
  volume = calls['projection'][1][0].shape
  assert volume == (2, config.model.volume_depth, size // 4, size // 4, volume[-1])
  # The flow network sees the source volume: the encoder's output, as the projection sees the
  # warped one.
  assert calls['flow_net'][1][0].shape[:4] == volume[:4]
  # Each part applies alone on its own parameters.
  module, shapes = calls['encoder']
  out = jax.eval_shape(lambda p, x: module.apply({'params': p}, x), params['encoder'], shapes[0])
  assert jax.tree.leaves(out)[0].shape[:4] == volume[:4]


@pytest.mark.slow
def test_benchmark_layers_times_every_part_and_splits_the_step():
  result = benchmarks.benchmark_layers(helpers.config_with(), repeats=1)
  expected = set(benchmarks.GENERATOR_PARTS) | {'warp', 'discriminator'}
  assert set(result['parts']) == expected
  for name, part in result['parts'].items():
    assert part['forward_backward_ms'] > 0 and part['forward_backward_flops'] > 0, name
  # Every part with a learned 2D convolution has kernel gradients; the warp has none, and the
  # flow network's convolutions are all 3D.
  for name in expected - {'warp', 'flow_net'}:
    assert result['parts'][name]['conv2d_weight_grad_ms'] > 0, name
  assert result['parts']['flow_net']['conv3d_ms'] > 0
  assert result['parts']['warp']['conv2d_weight_grad_ms'] == 0
  step = result['step']
  assert step['conv2d_weight_grad_ms'] > 0 and step['conv3d_ms'] > 0 and step['flops'] > 0
