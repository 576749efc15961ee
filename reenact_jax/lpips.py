"""LPIPS (VGG16 variant) distance: network, and weights from a local file in the public layout.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric") compares two images through five VGG16 activations (relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3): each is unit-normalised along channels, the squared difference is weighted
per channel by a learned non-negative linear head, averaged over space and summed over layers.

Weights: the reference implementation's state dict (`lpips.LPIPS(net='vgg').state_dict()`, with
the torchvision VGG16 backbone inside) has the keys

  net.slice1.0.weight  (64, 3, 3, 3)  ...  net.slice5.28.bias (512,)   the VGG16 `features`
  lin0.model.1.weight  (1, 64, 1, 1)  ...  lin4.model.1.weight (1, 512, 1, 1)
  scaling_layer.shift, scaling_layer.scale  (1, 3, 1, 1)  (optional here; defaults below)

where the number after `sliceK.` is the torchvision `features` index. Save it without torch in
the way: `np.savez('lpips_vgg.npz', **{k: v.numpy() for k, v in sd.items()})`. The package's own
`weights/v0.1/vgg.pth` holds only the `lin*` heads; for that, put the torchvision VGG16 tensors
(`features.N.weight` / `.bias`) into the same .npz: both key styles are accepted.
Not available offline: the loader is tested on weights the test makes (tests/test_evaluate.py).
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (name, torchvision `features` index) of the VGG16 convolutions, in network order; the block
# is the digit after 'conv'. The LPIPS slices end after the last ReLU of each block.
VGG16_CONVS = (
  ('conv1_1', 0),
  ('conv1_2', 2),
  ('conv2_1', 5),
  ('conv2_2', 7),
  ('conv3_1', 10),
  ('conv3_2', 12),
  ('conv3_3', 14),
  ('conv4_1', 17),
  ('conv4_2', 19),
  ('conv4_3', 21),
  ('conv5_1', 24),
  ('conv5_2', 26),
  ('conv5_3', 28),
)
VGG16_WIDTHS = (64, 128, 256, 512, 512)
NUM_LAYERS = 5
# First torchvision index of each LPIPS slice (slice k holds features[start_k:start_k+1]).
_SLICE_STARTS = (0, 4, 9, 16, 23, 30)
# The reference ScalingLayer: inputs in [-1, 1] are standardised with these (ImageNet statistics
# mapped to [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# Added to the channel norm before dividing (the reference's eps).
NORM_EPSILON = 1e-10


class LpipsError(ValueError):
  """A missing or malformed LPIPS weights file."""


def normalise_channels(features: jax.Array) -> jax.Array:
  """(B, H, W, C) -> the same divided by its channel-wise L2 norm (+ NORM_EPSILON)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
  return features / (norm + NORM_EPSILON)


class LPIPS(nn.Module):
  """LPIPS-VGG16 distance between two image batches.

  Attributes:
    widths: output channels of the five VGG16 blocks (VGG16_WIDTHS for the real network; the
      loader reads them from the file, so smaller made-up networks work the same way).
  """

  widths: tuple[int, ...] = VGG16_WIDTHS

  def features(self, images: jax.Array) -> list[jax.Array]:
    """Five unnormalised VGG16 activations of (B, H, W, 3) images in [0, 1]."""
    shift = self.param('shift', lambda *_: jnp.asarray(SHIFT, jnp.float32))
    scale = self.param('scale', lambda *_: jnp.asarray(SCALE, jnp.float32))
    x = (images * 2.0 - 1.0 - shift) / scale
    outputs = []
    block = '1'
    for name, _ in VGG16_CONVS:
      if name[4] != block:
        outputs.append(x)
        # torchvision MaxPool2d(2, 2): floor mode.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        block = name[4]
      x = nn.relu(
        nn.Conv(self.widths[int(block) - 1], (3, 3), padding=((1, 1), (1, 1)), name=name)(x)
      )
    outputs.append(x)
    return outputs

  @nn.compact
  def __call__(self, images: jax.Array, references: jax.Array) -> jax.Array:
    """Distance per image pair.

    Args:
      images, references: (B, H, W, 3) RGB in [0, 1], H and W >= 16 (four 2x poolings).

    Returns:
      (B,) LPIPS distance (0 for identical images; about 0.1-0.7 for real image pairs).
    """
    if images.shape != references.shape or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
        f'LPIPS needs two (B, H, W, 3) batches of one shape, got {images.shape} and '
        f'{references.shape}.'
      )
    if min(images.shape[1:3]) < 16:
      raise ValueError(f'LPIPS needs images of at least 16x16 pixels, got {images.shape[1:3]}.')
    both = self.features(jnp.concatenate([images, references], axis=0))
    total = 0.0
    for layer, activations in enumerate(both):
      first, second = jnp.split(normalise_channels(activations), 2, axis=0)
      head = self.param(f'lin{layer}', nn.initializers.ones, (activations.shape[-1],))
      weighted = jnp.square(first - second) @ head  # (B, h, w)
      total = total + jnp.mean(weighted, axis=(1, 2))
    return total


def _slice_of(feature_index: int) -> int:
  for k in range(NUM_LAYERS):
    if _SLICE_STARTS[k] <= feature_index < _SLICE_STARTS[k + 1]:
      return k + 1
  raise ValueError(feature_index)


def _tensor(tensors: Mapping[str, np.ndarray], keys: tuple[str, ...], path: str) -> np.ndarray:
  for key in keys:
    if key in tensors:
      return np.asarray(tensors[key], np.float32)
  raise LpipsError(
    f'{path} has no tensor {" or ".join(keys)}. Expected the lpips.LPIPS(net="vgg") state dict '
    '(net.sliceK.N.* and linK.model.1.weight) saved as .npz; see reenact_jax/lpips.py.'
  )


def params_from_state_dict(tensors: Mapping[str, np.ndarray], path: str = '<weights>'):
  """Public-layout tensors (PyTorch shapes) -> (LPIPS module, its Flax params)."""
  params: dict[str, Any] = {}
  widths = []
  for name, index in VGG16_CONVS:
    prefixes = (f'net.slice{_slice_of(index)}.{index}.', f'features.{index}.')
    weight = _tensor(tensors, tuple(p + 'weight' for p in prefixes), path)
    bias = _tensor(tensors, tuple(p + 'bias' for p in prefixes), path)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3) or bias.shape != weight.shape[:1]:
      raise LpipsError(
        f'{path}: {name} weight {weight.shape} / bias {bias.shape} are not a 3x3 convolution '
        '(O, I, 3, 3) / (O,).'
      )
    # PyTorch OIHW cross-correlation -> Flax HWIO (also cross-correlation).
    params[name] = {'kernel': weight.transpose(2, 3, 1, 0), 'bias': bias}
    if name.endswith('_1'):
      widths.append(weight.shape[0])
  expected_inputs = 3
  for name, _ in VGG16_CONVS:
    kernel = params[name]['kernel']
    if kernel.shape[2] != expected_inputs:
      raise LpipsError(
        f'{path}: {name} takes {kernel.shape[2]} input channels, the previous layer gives '
        f'{expected_inputs}.'
      )
    expected_inputs = kernel.shape[3]
  for layer in range(NUM_LAYERS):
    head = _tensor(tensors, (f'lin{layer}.model.1.weight', f'lin{layer}.weight'), path)
    head = head.reshape(-1)
    if head.shape[0] != widths[layer]:
      raise LpipsError(
        f'{path}: lin{layer} has {head.shape[0]} weights for a layer of {widths[layer]} channels.'
      )
    params[f'lin{layer}'] = head
  params['shift'] = (
    np.asarray(tensors['scaling_layer.shift'], np.float32).reshape(3)
    if 'scaling_layer.shift' in tensors
    else np.asarray(SHIFT, np.float32)
  )
  params['scale'] = (
    np.asarray(tensors['scaling_layer.scale'], np.float32).reshape(3)
    if 'scaling_layer.scale' in tensors
    else np.asarray(SCALE, np.float32)
  )
  return LPIPS(widths=tuple(widths)), params


def load(path: str | os.PathLike):
  """(LPIPS module, params) from a .npz of the public state dict (see the module docstring)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise LpipsError(f'LPIPS weights file {path} does not exist. Set the right path or leave it ""')
  if not path.endswith('.npz'):
    raise LpipsError(
      f'{path}: LPIPS weights must be a .npz of the PyTorch state dict (see reenact_jax/lpips.py'
      ' for the one-line export).'
    )
  with np.load(path) as archive:
    tensors = {re.sub(r'^module\.', '', key): archive[key] for key in archive.files}
  return params_from_state_dict(tensors, path)


def make_distance_fn(path: str | os.PathLike):
  """A jitted (images, references) -> (B,) LPIPS function with the weights of `path` bound."""
  module, params = load(path)
  params = jax.device_put(params, jax.local_devices()[0])
  apply = jax.jit(lambda p, a, b: module.apply({'params': p}, a, b))
  return lambda images, references: apply(params, images, references)
