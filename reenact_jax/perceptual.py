"""Frozen VGG19 feature pyramid for the perceptual loss; weight conversion and loading.

The network is torchvision's `vgg19().features` up to relu5_1, channels-last. Its weights are
never trained: `make_perceptual_loss` loads them from a file in the project's own format and
the train step passes them to the loss as data.

Getting the weights (once, on any machine):

1. Export the public ImageNet VGG19 weights (torchvision `vgg19-dcbb9e9d.pth`) to a framework
   neutral file. With torch installed:

     python -c "import numpy as np, torch; sd = torch.load('vgg19-dcbb9e9d.pth');
       np.savez('vgg19_torchvision.npz', **{k: v.numpy() for k, v in sd.items()})"

   A `.safetensors` file with the same `features.N.weight` / `features.N.bias` keys works too,
   and so does the Keras `vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5` file.
2. Convert to the project's format (checks every shape):

     python -m reenact_jax.perceptual convert --input=vgg19_torchvision.npz --output=vgg19.npz

3. Set `config.perceptual.weights_path = 'vgg19.npz'`.

Parameter names: torchvision index -> Flax name (Keras layer name in brackets)

  features.0  -> conv1_1 (block1_conv1)    features.19 -> conv4_1 (block4_conv1)
  features.2  -> conv1_2 (block1_conv2)    features.21 -> conv4_2 (block4_conv2)
  features.5  -> conv2_1 (block2_conv1)    features.23 -> conv4_3 (block4_conv3)
  features.7  -> conv2_2 (block2_conv2)    features.25 -> conv4_4 (block4_conv4)
  features.10 -> conv3_1 (block3_conv1)    features.28 -> conv5_1 (block5_conv1)
  features.12 -> conv3_2 (block3_conv2)
  features.14 -> conv3_3 (block3_conv3)
  features.16 -> conv3_4 (block3_conv4)

plus `input_mean` and `input_std` (3,), the per-channel input normalisation
`(x - input_mean) / input_std` applied to RGB in [0, 1]. They are part of the weights because
the two published weight sets expect different inputs: torchvision uses the ImageNet mean/std,
the Keras (Caffe) weights use BGR in [0, 255] minus a mean; the converter writes the matching
values (and folds BGR into conv1_1), so the module computes exactly what each original does.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of images in [0, 1].
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keras / Caffe VGG preprocessing: BGR in [0, 255] minus this mean (given here in RGB order).
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)

# (Flax name, torchvision `features` index, input channels, output channels), in network order.
VGG19_CONVS = (
  ('conv1_1', 0, 3, 64),
  ('conv1_2', 2, 64, 64),
  ('conv2_1', 5, 64, 128),
  ('conv2_2', 7, 128, 128),
  ('conv3_1', 10, 128, 256),
  ('conv3_2', 12, 256, 256),
  ('conv3_3', 14, 256, 256),
  ('conv3_4', 16, 256, 256),
  ('conv4_1', 19, 256, 512),
  ('conv4_2', 21, 512, 512),
  ('conv4_3', 23, 512, 512),
  ('conv4_4', 25, 512, 512),
  ('conv5_1', 28, 512, 512),
)
LAYER_NAMES = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
NUM_LAYERS = len(LAYER_NAMES)
BACKBONES = ('vgg19', 'none')
CONVERT_COMMAND = 'python -m reenact_jax.perceptual convert --input=<vgg19 weights> --output={}'
_PROJECT_FORMATS = ('.npz', '.safetensors', '.msgpack')


def min_size_for_layers(num_layers: int) -> int:
  """Smallest H (and W), in pixels, whose features reach relu{num_layers}_1.

  relu{k}_1 sits after k - 1 floor-mode 2x2 max-pools, so it needs H >= 2 ** (k - 1).
  """
  return 2 ** (num_layers - 1)


class VGG19Features(nn.Module):
  """torchvision VGG19 `features` up to relu5_1, channels-last, frozen (never trained).

  Attributes:
    dtype: compute dtype of the convolutions (e.g. jnp.bfloat16); parameters stay float32.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, num_layers: int = NUM_LAYERS) -> list[jax.Array]:
    """Features of RGB images.

    Args:
      images: (B, H, W, 3) RGB in [0, 1].
      num_layers: return relu1_1 ... relu{num_layers}_1 and skip the deeper convolutions.

    Returns:
      List of num_layers activations in `self.dtype`: relu{k}_1 is
      (B, H // 2 ** (k - 1), W // 2 ** (k - 1), C_k) with C = 64, 128, 256, 512, 512.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'VGG19Features expects images (B, H, W, 3), got shape {images.shape}.')
    if not 1 <= num_layers <= NUM_LAYERS:
      raise ValueError(f'num_layers must be in 1..{NUM_LAYERS}, got {num_layers}.')
    height, width = images.shape[1:3]
    if min(height, width) < min_size_for_layers(num_layers):
      raise ValueError(
        f'Images of {height}x{width} pixels are too small to reach {LAYER_NAMES[num_layers - 1]}'
        f' (needs at least {min_size_for_layers(num_layers)} pixels a side); ask for fewer'
        ' layers or use larger images.'
      )
    mean = self.param('input_mean', _constant_init(IMAGENET_MEAN), (3,), jnp.float32)
    std = self.param('input_std', _constant_init(IMAGENET_STD), (3,), jnp.float32)
    # Normalise in float32: with the Caffe weights the inputs are in [-124, 152].
    x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)

    outputs = []
    previous_block = '1'
    for name, _, _, channels in VGG19_CONVS:
      block, index_in_block = name[4:].split('_')
      if block != previous_block:
        # torchvision MaxPool2d(2, 2): floor mode, odd sizes drop the last row/column.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        previous_block = block
      conv = nn.Conv(
        channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name=name,
      )
      x = nn.relu(conv(x))
      if index_in_block == '1':
        outputs.append(x)
        if len(outputs) == num_layers:
          break
    return outputs


def _constant_init(values: Sequence[float]) -> Callable[..., jax.Array]:
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.broadcast_to(jnp.asarray(values, dtype), shape)

  return init


# ------------------------------------------------------------------------------ weight files


@functools.cache
def expected_param_shapes() -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined parameter path -> shape, from the module itself (no allocation)."""
  dummy = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(VGG19Features().init, jax.random.key(0), dummy)
  return {name: tuple(leaf.shape) for name, leaf in _flatten(variables['params']).items()}


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path + '/'))
    else:
      flat[path] = value
  return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def load_vgg19_params(path: str | os.PathLike) -> dict[str, Any]:
  """Reads weights written by `convert` and checks them against `VGG19Features`.

  Args:
    path: a `.npz`, `.safetensors` or `.msgpack` file written by `convert`.

  Returns:
    The `params` collection of VGG19Features as nested dicts of host float32 numpy arrays
    (conv kernels (3, 3, C_in, C_out) HWIO, biases (C_out,), input_mean/input_std (3,)). Put
    them on devices explicitly (e.g. `jax.device_put(params, replicated_sharding)`).

  Raises:
    FileNotFoundError: no file at `path` (the message gives the `convert` command).
    ValueError: unknown extension, unreadable file, or a key/shape that does not match.
  """
  path = os.fspath(path)
  convert_hint = CONVERT_COMMAND.format(path or 'vgg19.npz')
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(
      f'VGG19 weights file not found: {path!r}. Convert the public ImageNet VGG19 weights with'
      f' `{convert_hint}` (see the docstring of reenact_jax/perceptual.py), then point'
      " perceptual.weights_path at it; or set perceptual.backbone='none' to disable the"
      ' perceptual loss terms.'
    )
  extension = os.path.splitext(path)[1].lower()
  if extension not in _PROJECT_FORMATS:
    raise ValueError(
      f'VGG19 weights file {path!r}: unknown extension {extension!r}, expected one of'
      f' {_PROJECT_FORMATS} written by `{convert_hint}`.'
    )
  try:
    flat = _read_project_file(path, extension)
  except Exception as error:  # Corrupt or truncated file: say which one and how to redo it.
    raise ValueError(
      f'Cannot read VGG19 weights file {path!r} ({type(error).__name__}: {error}). Re-create'
      f' it with `{convert_hint}`.'
    ) from error

  expected = expected_param_shapes()
  missing = sorted(set(expected) - set(flat))
  if missing:
    # Project keys are 'conv1_1/kernel'; torchvision ones are 'features.0.weight'.
    looks_unconverted = any('.' in key for key in flat)
    hint = ' It looks like an unconverted torchvision state dict.' if looks_unconverted else ''
    raise ValueError(
      f'VGG19 weights file {path!r} lacks the keys {missing}.{hint} Convert the original'
      f' weights with `{convert_hint}`.'
    )
  unexpected = sorted(set(flat) - set(expected))
  if unexpected:
    raise ValueError(
      f'VGG19 weights file {path!r} has unexpected keys {unexpected}; it was not written for'
      f' this VGG19Features module. Re-create it with `{convert_hint}`.'
    )
  params = {}
  for key, shape in expected.items():
    value = np.asarray(flat[key])
    if value.shape != shape:
      raise ValueError(
        f'VGG19 weights file {path!r}: {key!r} has shape {value.shape}, expected {shape}.'
        f' The file does not match this VGG19Features module; re-create it with'
        f' `{convert_hint}`.'
      )
    if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
      raise ValueError(
        f'VGG19 weights file {path!r}: {key!r} is not finite floating point (dtype'
        f' {value.dtype}); re-create it with `{convert_hint}`.'
      )
    params[key] = value.astype(np.float32)
  return _unflatten(params)


def _read_project_file(path: str, extension: str) -> dict[str, np.ndarray]:
  if extension == '.npz':
    with np.load(path, allow_pickle=False) as archive:
      return {key: archive[key] for key in archive.files}
  if extension == '.safetensors':
    import safetensors.numpy  # Only needed for this format.

    return dict(safetensors.numpy.load_file(path))
  from flax import serialization

  with open(path, 'rb') as stream:
    return _flatten(serialization.msgpack_restore(stream.read()))


def _write_project_file(flat: Mapping[str, np.ndarray], path: str) -> None:
  extension = os.path.splitext(path)[1].lower()
  if extension not in _PROJECT_FORMATS:
    raise ValueError(
      f'Output {path!r}: unknown extension {extension!r}, choose one of {_PROJECT_FORMATS}.'
    )
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # Write next to the target, then rename: a crash never leaves a half-written weights file.
  temporary = f'{path}.tmp{extension}'
  if extension == '.npz':
    np.savez(temporary, **flat)
  elif extension == '.safetensors':
    import safetensors.numpy

    safetensors.numpy.save_file(
      {key: np.ascontiguousarray(value) for key, value in flat.items()}, temporary
    )
  else:
    from flax import serialization

    with open(temporary, 'wb') as stream:
      stream.write(serialization.msgpack_serialize(_unflatten(flat)))
  os.replace(temporary, path)


# ------------------------------------------------------------------------------ conversion


def convert(input_path: str | os.PathLike, output_path: str | os.PathLike) -> dict[str, Any]:
  """Converts public ImageNet VGG19 weights to the project's format and checks the result.

  Args:
    input_path: one of
      - `.npz` / `.safetensors`: torchvision VGG19 state dict (`features.{0,2,5,...,28}.weight`
        (C_out, C_in, 3, 3) OIHW and `.bias`; other keys such as `classifier.*` are ignored;
        keys may be prefixed by `module.` or `vgg.`),
      - `.h5` / `.hdf5`: Keras applications VGG19 (`block1_conv1` ... kernels (3, 3, C_in,
        C_out) HWIO, Caffe preprocessing; folded into input_mean/input_std and conv1_1).
    output_path: `.npz` (recommended), `.safetensors` or `.msgpack`.

  Returns:
    The converted params, as `load_vgg19_params(output_path)` reads them back.
  """
  input_path, output_path = os.fspath(input_path), os.fspath(output_path)
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f'VGG19 weights to convert not found: {input_path!r}.')
  extension = os.path.splitext(input_path)[1].lower()
  if extension in ('.npz', '.safetensors'):
    flat = torchvision_to_flat_params(_read_tensor_file(input_path, extension), input_path)
  elif extension in ('.h5', '.hdf5'):
    flat = keras_h5_to_flat_params(input_path)
  elif extension in ('.pth', '.pt', '.bin', '.ckpt'):
    raise ValueError(
      f'{input_path!r} is a PyTorch pickle, which needs torch to read. Export it first, on a'
      ' machine with torch: python -c "import numpy as np, torch;'
      f" sd = torch.load('{input_path}', map_location='cpu');"
      " np.savez('vgg19_torchvision.npz', **{k: v.numpy() for k, v in sd.items()})\""
      ' and convert the .npz.'
    )
  else:
    raise ValueError(
      f'Cannot convert {input_path!r}: unknown extension {extension!r}. Expected a torchvision'
      ' state dict as .npz or .safetensors, or a Keras VGG19 .h5.'
    )
  _write_project_file(flat, output_path)
  return load_vgg19_params(output_path)  # Proves the written file loads and matches.


def _read_tensor_file(path: str, extension: str) -> dict[str, np.ndarray]:
  if extension == '.npz':
    with np.load(path, allow_pickle=False) as archive:
      return {key: archive[key] for key in archive.files}
  import safetensors.numpy

  return dict(safetensors.numpy.load_file(path))


def _strip_prefixes(key: str) -> str:
  while True:
    for prefix in ('module.', 'vgg.'):
      if key.startswith(prefix):
        key = key[len(prefix) :]
        break
    else:
      return key


def torchvision_to_flat_params(
  state_dict: Mapping[str, np.ndarray], source: str = '<state dict>'
) -> dict[str, np.ndarray]:
  """torchvision VGG19 state dict (OIHW) -> flat project params (HWIO), shapes checked.

  Args:
    state_dict: name -> array, e.g. `features.0.weight` (64, 3, 3, 3); extra keys ignored.
    source: where the dict came from, for error messages.
  """
  tensors = {}
  for key, value in state_dict.items():
    stripped = _strip_prefixes(key)
    if stripped in tensors:
      raise ValueError(f'{source}: two tensors map to {stripped!r} after removing prefixes.')
    tensors[stripped] = value
  feature_indices = {
    int(match.group(1))
    for key in tensors
    if (match := re.fullmatch(r'features\.(\d+)\.weight', key))
  }
  if not feature_indices:
    raise ValueError(
      f'{source}: no `features.N.weight` keys (found e.g. {sorted(tensors)[:5]}). Expected a'
      ' torchvision VGG19 state dict (keys may be prefixed by `module.` or `vgg.`).'
    )
  if any('running_mean' in key for key in tensors):
    raise ValueError(f'{source}: this is VGG19-BN (batch norm); use the plain VGG19 weights.')
  if 17 in feature_indices and 16 not in feature_indices:
    raise ValueError(f'{source}: this looks like VGG16 (features.17 is a conv); use VGG19.')

  flat = {
    'input_mean': np.asarray(IMAGENET_MEAN, np.float32),
    'input_std': np.asarray(IMAGENET_STD, np.float32),
  }
  for name, index, in_channels, out_channels in VGG19_CONVS:
    weight_key, bias_key = f'features.{index}.weight', f'features.{index}.bias'
    for key, shape in (
      (weight_key, (out_channels, in_channels, 3, 3)),
      (bias_key, (out_channels,)),
    ):
      if key not in tensors:
        raise ValueError(f'{source}: missing {key!r} ({name}); is this a torchvision VGG19?')
      if tuple(tensors[key].shape) != shape:
        raise ValueError(
          f'{source}: {key!r} ({name}) has shape {tuple(tensors[key].shape)}, expected {shape}'
          ' (OIHW); is this a torchvision VGG19 state dict?'
        )
    # OIHW -> HWIO. Both frameworks cross-correlate, so no kernel flip.
    kernel_oihw = np.asarray(tensors[weight_key], np.float32)
    # Contiguous copy: safetensors writes the raw buffer of a transposed view wrongly.
    flat[f'{name}/kernel'] = np.ascontiguousarray(np.transpose(kernel_oihw, (2, 3, 1, 0)))
    flat[f'{name}/bias'] = np.asarray(tensors[bias_key], np.float32)
  return flat


def keras_h5_to_flat_params(path: str) -> dict[str, np.ndarray]:
  """Keras applications VGG19 `.h5` weights -> flat project params, shapes checked.

  Keras VGG19 expects BGR in [0, 255] minus CAFFE_MEAN. For RGB x in [0, 1] that is
  `(x - CAFFE_MEAN_RGB / 255) / (1 / 255)` followed by an RGB -> BGR channel swap; the swap
  is folded exactly into conv1_1 by reversing its input channels.
  """
  import h5py  # Only needed for this format.

  flat = {
    'input_mean': np.asarray(CAFFE_MEAN_RGB, np.float32) / np.float32(255.0),
    'input_std': np.full((3,), 1.0 / 255.0, np.float32),
  }
  with h5py.File(path, 'r') as h5:
    root = h5['model_weights'] if 'model_weights' in h5 else h5
    for name, _, in_channels, out_channels in VGG19_CONVS:
      block, conv = name[4:].split('_')
      layer = f'block{block}_conv{conv}'
      if layer not in root:
        raise ValueError(f'{path}: no layer {layer!r} ({name}); is this a Keras VGG19 file?')
      # Old files hold `block1_conv1_W_1:0`, newer ones `block1_conv1/kernel:0`: take any.
      datasets = []
      root[layer].visit(
        lambda item_name, group=root[layer], found=datasets: found.append(group[item_name])
      )
      datasets = [item for item in datasets if isinstance(item, h5py.Dataset)]
      kernels = [np.asarray(item, np.float32) for item in datasets if item.ndim == 4]
      biases = [np.asarray(item, np.float32) for item in datasets if item.ndim == 1]
      if len(kernels) != 1 or len(biases) != 1:
        raise ValueError(f'{path}: layer {layer!r} should hold one kernel and one bias.')
      kernel, bias = kernels[0], biases[0]
      if kernel.shape == (out_channels, in_channels, 3, 3):
        raise ValueError(
          f'{path}: {layer!r} is in Theano (OIHW, flipped) order; use the'
          ' tf_dim_ordering Keras file.'
        )
      if kernel.shape != (3, 3, in_channels, out_channels) or bias.shape != (out_channels,):
        raise ValueError(
          f'{path}: {layer!r} has kernel {kernel.shape} and bias {bias.shape}, expected'
          f' {(3, 3, in_channels, out_channels)} (HWIO) and {(out_channels,)}.'
        )
      if name == 'conv1_1':
        kernel = kernel[:, :, ::-1, :]  # The module feeds RGB; Keras conv1_1 reads BGR.
      flat[f'{name}/kernel'] = np.ascontiguousarray(kernel)
      flat[f'{name}/bias'] = bias
  return flat


# ------------------------------------------------------------------------------ the loss

_warned_disabled = False
_reported_truncations: set[tuple[int, int, int]] = set()


def _zero_perceptual_loss(params, prediction, target) -> jax.Array:
  del params, prediction, target
  return jnp.zeros((), jnp.float32)


def pyramid_perceptual_loss(
  params: Mapping[str, Any],
  prediction: jax.Array,
  target: jax.Array,
  *,
  module: VGG19Features,
  scales: Sequence[float],
  layer_weights: Sequence[float],
) -> jax.Array:
  """Pyramid perceptual loss: sum over scales s and layers l of w_l * mean |phi_l - phi_l'|.

  Both images are resized to round(H * s) x round(W * s) with antialiased linear
  interpolation (a triangle filter over the covered pixels: area-like when shrinking). At
  each scale, phi_l(prediction) and stop_gradient(phi_l(target)) are compared with L1,
  averaged over all elements (B, h_l, w_l, C_l) of the layer. Layers that the scaled image is
  too small to reach (relu{k}_1 needs >= 2 ** (k - 1) pixels a side) are left out, not
  re-weighted. Layers with weight 0 are not computed.

  Args:
    params: VGG19Features params (frozen: gradients are stopped here).
    prediction, target: (B, H, W, 3) RGB in [0, 1].
    module: the VGG19Features to apply (sets the compute dtype).
    scales: image scale factors in (0, 1], e.g. (1, 0.5, 0.25, 0.125).
    layer_weights: 5 weights for relu1_1 ... relu5_1.

  Returns:
    Scalar float32 loss; gradients flow to `prediction` only.
  """
  if prediction.shape != target.shape or prediction.ndim != 4 or prediction.shape[-1] != 3:
    raise ValueError(
      'Perceptual loss expects prediction and target of the same shape (B, H, W, 3), got'
      f' {prediction.shape} and {target.shape}.'
    )
  params = jax.lax.stop_gradient(params)
  target = jax.lax.stop_gradient(target)
  weighted = [index for index, weight in enumerate(layer_weights) if weight != 0]
  if not weighted:
    return jnp.zeros((), jnp.float32)
  batch, height, width, channels = prediction.shape
  total = jnp.zeros((), jnp.float32)
  for scale in scales:
    scaled_height, scaled_width = round(height * scale), round(width * scale)
    reachable = sum(min(scaled_height, scaled_width) >= min_size_for_layers(k) for k in range(1, 6))
    num_layers = min(weighted[-1] + 1, reachable)
    if num_layers < weighted[-1] + 1:
      key = (scaled_height, scaled_width, num_layers)
      if key not in _reported_truncations:
        _reported_truncations.add(key)
        logging.info(
          'Perceptual loss: at scale %s the %dx%d image only reaches %s; deeper layers are'
          ' left out at that scale.',
          scale,
          scaled_height,
          scaled_width,
          LAYER_NAMES[num_layers - 1] if num_layers else 'no layer',
        )
    if num_layers == 0:
      continue
    if (scaled_height, scaled_width) == (height, width):
      scaled_prediction, scaled_target = prediction, target
    else:
      shape = (batch, scaled_height, scaled_width, channels)
      scaled_prediction = jax.image.resize(prediction, shape, 'linear', antialias=True)
      scaled_target = jax.image.resize(target, shape, 'linear', antialias=True)
    prediction_features = module.apply({'params': params}, scaled_prediction, num_layers=num_layers)
    target_features = module.apply({'params': params}, scaled_target, num_layers=num_layers)
    for weight, predicted, wanted in zip(
      layer_weights, prediction_features, target_features, strict=False
    ):
      if weight == 0:
        continue
      difference = predicted.astype(jnp.float32) - jax.lax.stop_gradient(wanted).astype(jnp.float32)
      total = total + weight * jnp.mean(jnp.abs(difference))
  return total


def make_perceptual_loss(
  perceptual_config: Any, *, compute_dtype: Any = jnp.float32, abstract: bool = False
) -> tuple[dict[str, Any] | None, Callable[..., jax.Array]]:
  """Builds the perceptual loss from `config.perceptual` (read here, outside jit).

  Args:
    perceptual_config: ConfigDict with `backbone` ('vgg19' or 'none'), `weights_path` (a file
      written by `convert`), `scales` and `layer_weights` (5 weights, relu1_1 ... relu5_1).
    compute_dtype: dtype of the VGG convolutions ('bfloat16' or 'float32' or a dtype);
      parameters and the loss stay float32.
    abstract: return the params as `jax.ShapeDtypeStruct`s and read no weights: for lowering
      and compiling a train step ahead of time (launch/aot_check.py), never for running it.

  Returns:
    (params, loss_fn): params are host numpy arrays (None for 'none') to pass in as data;
    `loss_fn(params, prediction (B, H, W, 3), target (B, H, W, 3)) -> float32 scalar`, see
    `pyramid_perceptual_loss`. With backbone 'none' loss_fn returns 0.0 and a warning is
    logged once per process.
  """
  global _warned_disabled
  backbone = perceptual_config.backbone
  if backbone == 'none':
    if not _warned_disabled:
      _warned_disabled = True
      logging.warning(
        "perceptual.backbone='none': the perceptual loss terms are disabled (always 0). To"
        " enable them, set perceptual.backbone='vgg19' and perceptual.weights_path to VGG19"
        ' weights converted with `%s`.',
        CONVERT_COMMAND.format('vgg19.npz'),
      )
    return None, _zero_perceptual_loss
  if backbone not in BACKBONES:
    raise ValueError(
      f"Unknown perceptual.backbone {backbone!r}; choose one of {BACKBONES} ('none' disables"
      ' the perceptual loss terms).'
    )
  weights_path = perceptual_config.get('weights_path', '') or ''
  if not weights_path and not abstract:
    raise ValueError(
      "perceptual.backbone='vgg19' needs perceptual.weights_path (training on random VGG"
      ' weights would be silently meaningless). Convert the public ImageNet weights with'
      f' `{CONVERT_COMMAND.format("vgg19.npz")}` and set perceptual.weights_path, or set'
      " perceptual.backbone='none' to disable the perceptual loss terms."
    )
  layer_weights = tuple(float(weight) for weight in perceptual_config.layer_weights)
  if len(layer_weights) != NUM_LAYERS:
    raise ValueError(
      f'perceptual.layer_weights needs {NUM_LAYERS} values ({", ".join(LAYER_NAMES)}), got'
      f' {layer_weights}.'
    )
  scales = tuple(float(scale) for scale in perceptual_config.scales)
  if not scales or not all(0.0 < scale <= 1.0 for scale in scales):
    raise ValueError(f'perceptual.scales must be non-empty values in (0, 1], got {scales}.')
  if abstract:
    params = _unflatten(
      {
        name: jax.ShapeDtypeStruct(shape, jnp.float32)
        for name, shape in expected_param_shapes().items()
      }
    )
  else:
    params = load_vgg19_params(weights_path)
  module = VGG19Features(dtype=jnp.dtype(compute_dtype))
  loss_fn = functools.partial(
    pyramid_perceptual_loss, module=module, scales=scales, layer_weights=layer_weights
  )
  return params, loss_fn


# ------------------------------------------------------------------------------ command line


def _main(argv: Sequence[str] | None = None) -> None:
  import argparse

  parser = argparse.ArgumentParser(
    prog='python -m reenact_jax.perceptual', description=__doc__.splitlines()[0]
  )
  commands = parser.add_subparsers(dest='command', required=True)
  convert_parser = commands.add_parser(
    'convert', help='Convert public ImageNet VGG19 weights to the project format.'
  )
  convert_parser.add_argument(
    '--input', required=True, help='torchvision state dict (.npz/.safetensors) or Keras .h5.'
  )
  convert_parser.add_argument(
    '--output', required=True, help='Project weights file: .npz, .safetensors or .msgpack.'
  )
  args = parser.parse_args(argv)
  params = convert(args.input, args.output)
  count = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
  print(f'Wrote {args.output}: {count:,} VGG19 parameters (relu1_1 ... relu5_1), shapes checked.')


if __name__ == '__main__':
  _main()
