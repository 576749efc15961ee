"""Conversion of the public ImageNet VGG19 weights to the project's weight files.

The command is `python -m reenact_jax.convert_vgg`; reenact_jax/perceptual.py reads the result.
Inputs: a torchvision VGG19 state dict as `.npz` or `.safetensors`, or the Keras applications
VGG19 `.h5`. Outputs: `.npz` (recommended), `.safetensors` or `.msgpack`.
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import serialization

from reenact_jax import perceptual
from reenact_jax.models.vgg import CAFFE_MEAN_RGB, IMAGENET_MEAN, IMAGENET_STD, VGG19_CONVS


def _write_project_file(flat: Mapping[str, np.ndarray], path: str) -> None:
  extension = os.path.splitext(path)[1].lower()
  if extension not in perceptual.PROJECT_FORMATS:
    raise ValueError(
      f'Output {path!r}: unknown extension {extension!r}, choose one of '
      f'{perceptual.PROJECT_FORMATS}.'
    )
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # Write next to the target, then rename: a crash never leaves a half-written weights file.
  temporary = f'{path}.tmp{extension}'
  if extension == '.npz':
    np.savez(temporary, **flat)
  elif extension == '.safetensors':
    import safetensors.numpy  # Optional ('weights' extra): only this format needs it.

    safetensors.numpy.save_file(
      {key: np.ascontiguousarray(value) for key, value in flat.items()}, temporary
    )
  else:
    with open(temporary, 'wb') as stream:
      stream.write(serialization.msgpack_serialize(perceptual.unflatten(flat)))
  os.replace(temporary, path)


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
  return perceptual.load_vgg19_params(output_path)  # Proves the written file loads and matches.


def _read_tensor_file(path: str, extension: str) -> dict[str, np.ndarray]:
  if extension == '.npz':
    with np.load(path, allow_pickle=False) as archive:
      return {key: archive[key] for key in archive.files}
  import safetensors.numpy  # Optional ('weights' extra): only this format needs it.

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
  import h5py  # Optional ('weights' extra): only this format needs it.

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
