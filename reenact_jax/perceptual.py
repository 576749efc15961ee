"""The perceptual loss of a run: VGG19 weights read from a local file, checked, and bound to the
pyramid loss of reenact_jax/models/vgg.py.

Getting the weights (once, on any machine):

1. Export the public ImageNet VGG19 weights (torchvision `vgg19-dcbb9e9d.pth`) to a framework
   neutral file. With torch installed:

     python -c "import numpy as np, torch; sd = torch.load('vgg19-dcbb9e9d.pth');
       np.savez('vgg19_torchvision.npz', **{k: v.numpy() for k, v in sd.items()})"

   A `.safetensors` file with the same `features.N.weight` / `features.N.bias` keys works too,
   and so does the Keras `vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5` file.
2. Convert to the project's format (checks every shape):

     python -m reenact_jax.convert_vgg --input=vgg19_torchvision.npz --output=vgg19.npz

3. Set `config.perceptual.weights_path = 'vgg19.npz'`.
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import serialization, traverse_util

from reenact_jax.models.vgg import (
  LAYER_NAMES,
  NUM_LAYERS,
  VGG19Features,
  pyramid_perceptual_loss,
)

BACKBONES = ('vgg19', 'none')
CONVERT_COMMAND = 'python -m reenact_jax.convert_vgg --input=<vgg19 weights> --output={}'
PROJECT_FORMATS = ('.npz', '.safetensors', '.msgpack')


def flatten(tree) -> dict[str, Any]:
  """Nested parameter dicts -> {'conv1_1/kernel': array} (the weight files' keys)."""
  return traverse_util.flatten_dict(tree, sep='/')


def unflatten(flat) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep='/')


@functools.cache
def expected_param_shapes() -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined parameter path -> shape, from the module itself (no allocation)."""
  dummy = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(VGG19Features().init, jax.random.key(0), dummy)
  return {name: tuple(leaf.shape) for name, leaf in flatten(variables['params']).items()}


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
  if extension not in PROJECT_FORMATS:
    raise ValueError(
      f'VGG19 weights file {path!r}: unknown extension {extension!r}, expected one of'
      f' {PROJECT_FORMATS} written by `{convert_hint}`.'
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
  return unflatten(params)


def _read_project_file(path: str, extension: str) -> dict[str, np.ndarray]:
  if extension == '.npz':
    with np.load(path, allow_pickle=False) as archive:
      return {key: archive[key] for key in archive.files}
  if extension == '.safetensors':
    import safetensors.numpy  # Optional ('weights' extra): only this format needs it.

    return dict(safetensors.numpy.load_file(path))
  with open(path, 'rb') as stream:
    return flatten(serialization.msgpack_restore(stream.read()))


_warned_disabled = False


def _zero_perceptual_loss(params, prediction, target) -> jax.Array:
  del params, prediction, target
  return jnp.zeros((), jnp.float32)


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
    params = unflatten(
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
