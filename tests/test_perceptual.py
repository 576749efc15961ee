"""Tests of reenact_jax.perceptual: the VGG19 port is exact, the loss behaves, errors are clear.

Exactness is checked against an independent float64 NumPy VGG19 that reads the weights in
their original layout (torchvision OIHW or Keras HWIO), so a wrong transpose, channel order,
padding, pooling mode or normalisation in the Flax port or the converter fails the test.
"""

import functools
import os
from unittest import mock

import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from reenact_jax import perceptual, vgg_conversion
from reenact_jax.models import vgg
from tests.helpers import run_command

# Odd, non-square size: floor-mode pooling gives relu5_1 of 2x1 (34->17->8->4->2, 26->13->6->3->1).
IMAGE_SHAPE = (2, 34, 26, 3)
# Convolutions per block up to conv5_1.
BLOCKS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 1))

_apply_features = jax.jit(vgg.VGG19Features().apply)


def _he_init_weights(seed):
  """Random VGG19 conv weights, He-initialised so activations keep a scale near 1."""
  rng = np.random.default_rng(seed)
  weights = {}
  for name, _, in_channels, out_channels in vgg.VGG19_CONVS:
    std = np.sqrt(2.0 / (9 * in_channels))
    kernel_oihw = rng.normal(0.0, std, (out_channels, in_channels, 3, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, (out_channels,)).astype(np.float32)
    weights[name] = (kernel_oihw, bias)
  return weights


def _reference_features(images, taps, biases, mean, std, *, bgr):
  """Independent float64 VGG19 up to relu5_1.

  taps[name][dy][dx] is the (C_in, C_out) matrix of kernel position (dy, dx) read directly from
  the original layout; the 3x3 'same' convolution is a sum of 9 shifted matmuls over the
  zero-padded input (cross-correlation, as in both frameworks).
  """
  x = (images.astype(np.float64) - np.asarray(mean)) / np.asarray(std)
  if bgr:
    x = x[..., ::-1]
  outputs = []
  for block, num_convs in BLOCKS:
    if block > 1:
      batch, height, width, channels = x.shape
      x = x[:, : height // 2 * 2, : width // 2 * 2]
      x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))
    for conv in range(1, num_convs + 1):
      name = f'conv{block}_{conv}'
      height, width = x.shape[1:3]
      padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      out = np.broadcast_to(biases[name].astype(np.float64), x.shape[:3] + biases[name].shape)
      for dy in range(3):
        for dx in range(3):
          patch = padded[:, dy : dy + height, dx : dx + width]
          out = out + patch @ taps[name][dy][dx].astype(np.float64)
      x = np.maximum(out, 0.0)
      if conv == 1:
        outputs.append(x)
  return outputs


def _assert_matches_reference(features, reference):
  assert len(features) == len(reference) == 5
  for layer, got, want in zip(vgg.LAYER_NAMES, features, reference, strict=True):
    assert got.shape == want.shape, layer
    scale = np.abs(want).max()
    # The comparison means something only if the layer is neither dead nor tiny.
    assert scale > 0.1 and np.mean(want > 0) > 0.05, layer
    error = np.abs(np.asarray(got, np.float64) - want).max()
    assert error <= 1e-4 * max(1.0, scale), (layer, error, scale)


@pytest.fixture(scope='module')
def torch_weights():
  return _he_init_weights(seed=0)


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(1).uniform(0.0, 1.0, IMAGE_SHAPE).astype(np.float32)


@pytest.fixture(scope='module')
def torch_reference(torch_weights, images):
  taps = {
    name: [[kernel[:, :, dy, dx].T for dx in range(3)] for dy in range(3)]
    for name, (kernel, _) in torch_weights.items()
  }
  biases = {name: bias for name, (_, bias) in torch_weights.items()}
  return _reference_features(images, taps, biases, vgg.IMAGENET_MEAN, vgg.IMAGENET_STD, bgr=False)


@pytest.fixture(scope='module')
def torch_files(torch_weights, tmp_path_factory):
  """The torchvision state dict as .npz (plain keys) and .safetensors ('module.' prefixed)."""
  state = {}
  for name, index, _, _ in vgg.VGG19_CONVS:
    kernel, bias = torch_weights[name]
    state[f'features.{index}.weight'] = kernel
    state[f'features.{index}.bias'] = bias
  # Keys a full torchvision checkpoint also has; the converter must ignore them.
  state['classifier.0.weight'] = np.ones((4, 8), np.float32)
  state['classifier.0.bias'] = np.ones((4,), np.float32)
  directory = tmp_path_factory.mktemp('torchvision')
  npz_path = str(directory / 'vgg19_torchvision.npz')
  np.savez(npz_path, **state)
  safetensors_path = str(directory / 'vgg19_torchvision.safetensors')
  safetensors.numpy.save_file({f'module.{k}': v for k, v in state.items()}, safetensors_path)
  return {'npz': npz_path, 'safetensors': safetensors_path, 'state': state}


@pytest.fixture(scope='module')
def converted_path(torch_files, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('converted') / 'vgg19.npz')
  vgg_conversion.convert(torch_files['npz'], path)
  return path


def _perceptual_config(weights_path, scales=(1.0, 0.5, 0.25, 0.125), layer_weights=(1.0,) * 5):
  config = ml_collections.ConfigDict()
  config.backbone = 'vgg19'
  config.weights_path = weights_path
  config.scales = scales
  config.layer_weights = layer_weights
  return config


# ------------------------------------------------------------------------------ exact port


@pytest.mark.parametrize(
  'input_format, output_extension',
  [('npz', '.npz'), ('safetensors', '.msgpack'), ('safetensors', '.safetensors')],
)
def test_converted_torchvision_weights_match_numpy_reference(
  torch_files, torch_reference, images, tmp_path, input_format, output_extension
):
  output = str(tmp_path / f'vgg19{output_extension}')
  returned = vgg_conversion.convert(torch_files[input_format], output)
  params = perceptual.load_vgg19_params(output)
  assert jax.tree.all(jax.tree.map(np.array_equal, returned, params))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  features = _apply_features({'params': params}, images)
  _assert_matches_reference(features, torch_reference)


def test_converted_keras_h5_weights_match_numpy_reference(images, tmp_path):
  weights = _he_init_weights(seed=2)
  h5_path = str(tmp_path / 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5')
  layer_names = ['input_1']
  # Keras scales its inputs to [0, 255]; rescale the He init so activations stay near 1.
  with h5py.File(h5_path, 'w') as h5:
    h5.create_group('input_1')
    for name, _, _, _ in vgg.VGG19_CONVS:
      block, conv = name[4:].split('_')
      layer = f'block{block}_conv{conv}'
      if conv == '1' and block != '1':
        layer_names.append(f'block{int(block) - 1}_pool')
        h5.create_group(layer_names[-1])
      layer_names.append(layer)
      kernel_oihw, bias = weights[name]
      if name == 'conv1_1':
        kernel_oihw = kernel_oihw / 60.0
      group = h5.create_group(layer)
      group.create_dataset(f'{layer}_W_1:0', data=np.transpose(kernel_oihw, (2, 3, 1, 0)))
      group.create_dataset(f'{layer}_b_1:0', data=bias)
      group.attrs['weight_names'] = [f'{layer}_W_1:0'.encode(), f'{layer}_b_1:0'.encode()]
    h5.attrs['layer_names'] = [name.encode() for name in layer_names]

  output = str(tmp_path / 'vgg19_keras.npz')
  vgg_conversion.convert(h5_path, output)
  params = perceptual.load_vgg19_params(output)
  features = _apply_features({'params': params}, images)

  # Reference: Keras 'caffe' preprocessing (BGR, [0, 255], minus the mean) with HWIO kernels.
  with h5py.File(h5_path, 'r') as h5:
    kernels = {name: h5[f'block{name[4]}_conv{name[6]}'] for name, *_ in vgg.VGG19_CONVS}
    taps, biases = {}, {}
    for name, group in kernels.items():
      layer = group.name.strip('/')
      kernel_hwio = np.asarray(group[f'{layer}_W_1:0'])
      taps[name] = [[kernel_hwio[dy, dx] for dx in range(3)] for dy in range(3)]
      biases[name] = np.asarray(group[f'{layer}_b_1:0'])
  caffe_mean_bgr = np.array([103.939, 116.779, 123.68])
  reference = _reference_features(
    images, taps, biases, caffe_mean_bgr[::-1] / 255.0, np.full(3, 1 / 255.0), bgr=True
  )
  _assert_matches_reference(features, reference)


def test_bfloat16_compute_keeps_float32_params_and_is_close(converted_path, images):
  module = vgg.VGG19Features(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  params = perceptual.load_vgg19_params(converted_path)
  low = jax.jit(module.apply)({'params': params}, images)
  high = _apply_features({'params': params}, images)
  for layer, got, want in zip(vgg.LAYER_NAMES, low, high, strict=True):
    assert got.dtype == jnp.bfloat16
    error = jnp.abs(got.astype(jnp.float32) - want).max()
    assert error <= 0.05 * jnp.abs(want).max(), layer


def test_num_layers_truncates_and_too_small_input_is_a_clear_error(converted_path):
  params = perceptual.load_vgg19_params(converted_path)
  module = vgg.VGG19Features()
  features = module.apply({'params': params}, jnp.zeros((1, 4, 4, 3)), num_layers=3)
  assert [f.shape for f in features] == [(1, 4, 4, 64), (1, 2, 2, 128), (1, 1, 1, 256)]
  with pytest.raises(ValueError, match=r'4x4 pixels are too small to reach relu4_1'):
    module.apply({'params': params}, jnp.zeros((1, 4, 4, 3)), num_layers=4)


def test_command_line_convert(torch_files, converted_path, tmp_path):
  output = str(tmp_path / 'cli.npz')
  result = run_command(
    'reenact_jax.convert_vgg', f'--input={torch_files["npz"]}', f'--output={output}'
  )
  assert result.returncode == 0, result.stderr
  assert 'checked' in result.stdout
  got = perceptual.load_vgg19_params(output)
  want = perceptual.load_vgg19_params(converted_path)
  assert jax.tree.all(jax.tree.map(np.array_equal, got, want))


# ------------------------------------------------------------------------------ errors


def test_missing_weights_file_names_path_and_convert_command(tmp_path):
  path = str(tmp_path / 'nowhere' / 'vgg19.npz')
  with pytest.raises(FileNotFoundError) as error:
    perceptual.load_vgg19_params(path)
  assert path in str(error.value)
  assert 'python -m reenact_jax.convert_vgg' in str(error.value)
  with pytest.raises(FileNotFoundError, match='python -m reenact_jax.convert_vgg'):
    perceptual.make_perceptual_loss(_perceptual_config(path))


def test_wrong_shape_weights_file_names_file_key_shapes_and_fix(converted_path, tmp_path):
  flat = {
    key: np.zeros(shape, np.float32) for key, shape in perceptual.expected_param_shapes().items()
  }
  flat['conv2_1/kernel'] = np.zeros((3, 3, 64, 64), np.float32)
  path = str(tmp_path / 'wrong.npz')
  np.savez_compressed(path, **flat)
  with pytest.raises(ValueError) as error:
    perceptual.load_vgg19_params(path)
  message = str(error.value)
  for part in (path, "'conv2_1/kernel'", '(3, 3, 64, 64)', '(3, 3, 64, 128)', 'convert'):
    assert part in message, (part, message)


def test_unconverted_state_dict_is_refused_with_convert_hint(torch_files):
  with pytest.raises(ValueError, match=r'unconverted torchvision state dict.*convert'):
    perceptual.load_vgg19_params(torch_files['npz'])


def test_converter_refuses_wrong_networks(torch_files):
  state = dict(torch_files['state'])
  state['features.10.weight'] = np.zeros((256, 64, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"'features.10.weight' \(conv3_1\) has shape"):
    vgg_conversion.torchvision_to_flat_params(state, 'x.npz')
  vgg16_like = dict(torch_files['state'])
  vgg16_like['features.17.weight'] = vgg16_like.pop('features.16.weight')
  with pytest.raises(ValueError, match='VGG16'):
    vgg_conversion.torchvision_to_flat_params(vgg16_like, 'x.npz')
  with pytest.raises(ValueError, match='needs torch'):
    open_path = os.path.join(os.path.dirname(torch_files['npz']), 'vgg19.pth')
    open(open_path, 'wb').close()
    vgg_conversion.convert(open_path, 'out.npz')


def test_vgg19_without_weights_path_is_an_error():
  with pytest.raises(ValueError, match='needs perceptual.weights_path'):
    perceptual.make_perceptual_loss(_perceptual_config(''))
  config = _perceptual_config('')
  del config['weights_path']
  with pytest.raises(ValueError, match='needs perceptual.weights_path'):
    perceptual.make_perceptual_loss(config)


def test_unknown_backbone_lists_choices():
  config = _perceptual_config('x.npz')
  config.backbone = 'resnet50'
  with pytest.raises(ValueError, match=r"'resnet50'.*'vgg19', 'none'"):
    perceptual.make_perceptual_loss(config)


# ------------------------------------------------------------------------------ the loss


def test_none_backbone_returns_zero_and_warns_once(monkeypatch):
  monkeypatch.setattr(perceptual, '_warned_disabled', False)
  config = _perceptual_config('')
  config.backbone = 'none'
  with mock.patch.object(perceptual.logging, 'warning') as warning:
    params, loss_fn = perceptual.make_perceptual_loss(config)
    perceptual.make_perceptual_loss(config)
    x = jnp.ones((1, 8, 8, 3))
    value = jax.jit(loss_fn)(params, x, jnp.zeros_like(x))
  assert params is None
  assert value.dtype == jnp.float32 and value.shape == () and float(value) == 0.0
  assert warning.call_count == 1
  message = warning.call_args[0][0] % warning.call_args[0][1:]
  assert 'disabled' in message and "backbone='vgg19'" in message and 'convert' in message


def test_pyramid_loss_zero_for_identical_positive_for_different(converted_path):
  params, loss_fn = perceptual.make_perceptual_loss(_perceptual_config(converted_path))
  rng = np.random.default_rng(3)
  prediction = jnp.asarray(rng.uniform(0, 1, (1, 32, 32, 3)), jnp.float32)
  target = jnp.asarray(rng.uniform(0, 1, (1, 32, 32, 3)), jnp.float32)
  # Default 4 scales at 32x32: at 1/8 (4x4) only relu1_1..relu3_1 are reachable.
  loss_fn = jax.jit(loss_fn)
  same = float(loss_fn(params, target, target))
  different = float(loss_fn(params, prediction, target))
  assert np.isfinite(different) and different > 0.1
  # Identical up to float rounding (XLA may fuse the two identical VGG passes differently).
  assert abs(same) <= 1e-5 * different


def test_loss_is_weighted_mean_l1_summed_over_scales_with_gradient_to_prediction_only(
  converted_path,
):
  rng = np.random.default_rng(4)
  prediction = jnp.asarray(rng.uniform(0, 1, (2, 16, 16, 3)), jnp.float32)
  target = jnp.asarray(rng.uniform(0, 1, (2, 16, 16, 3)), jnp.float32)
  layer_weights = (2.0, 0.0, 0.5, 0.0, 0.0)
  params, loss_fn = perceptual.make_perceptual_loss(
    _perceptual_config(converted_path, (1.0, 0.5), layer_weights)
  )
  value, (grad_prediction, grad_target) = jax.jit(jax.value_and_grad(loss_fn, argnums=(1, 2)))(
    params, prediction, target
  )

  apply = jax.jit(functools.partial(vgg.VGG19Features().apply, num_layers=3))
  half = (2, 8, 8, 3)
  expected = 0.0
  for a, b in (
    (prediction, target),
    (jax.image.resize(prediction, half, 'linear'), jax.image.resize(target, half, 'linear')),
  ):
    features_a, features_b = apply({'params': params}, a), apply({'params': params}, b)
    expected += 2.0 * float(jnp.mean(jnp.abs(features_a[0] - features_b[0])))
    expected += 0.5 * float(jnp.mean(jnp.abs(features_a[2] - features_b[2])))
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  assert np.all(np.isfinite(grad_prediction)) and float(jnp.abs(grad_prediction).max()) > 0.0
  assert float(jnp.abs(grad_target).max()) == 0.0  # Target features are stop_gradient'ed.

  # At 1/8 the 16x16 image is 2x2: relu3_1 and deeper are out of reach and left out.
  params, loss_fn = perceptual.make_perceptual_loss(
    _perceptual_config(converted_path, (0.125,), (0.0, 0.0, 1.0, 1.0, 1.0))
  )
  assert float(loss_fn(params, prediction, target)) == 0.0
