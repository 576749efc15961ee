"""Frozen VGG19 feature pyramid and the pyramid perceptual loss.

The network is torchvision's `vgg19().features` up to relu5_1, channels-last. Its weights are
never trained: reenact_jax/perceptual.py loads them from a file converted once from the public
ImageNet weights (reenact_jax/vgg_conversion.py) and the train step passes them in as data.

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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
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


_reported_truncations: set[tuple[int, int, int]] = set()


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
