"""Building blocks shared by the generator parts and the discriminator.

Channels-last throughout: images (B, H, W, C), volumes (B, D, H, W, C). Every block takes a
`dtype` (the compute dtype; parameters stay float32) and has an array-only `__call__`, so it can
be wrapped in `nn.remat` without static arguments.
"""

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Dtype:
  """Maps `config.model.compute_dtype` to a jnp dtype."""
  if name not in _DTYPES:
    raise ValueError(
      f'model.compute_dtype={name!r} is not supported; use one of {sorted(_DTYPES)}.'
    )
  return _DTYPES[name]


def maybe_remat(module_class: type[nn.Module], remat: bool) -> type[nn.Module]:
  """`nn.remat(module_class)` when `remat`, else the class itself (same parameter tree)."""
  return nn.remat(module_class) if remat else module_class


def num_groups(channels: int) -> int:
  """GroupNorm groups: up to 32, dividing `channels` (tiny test models get 1-channel groups)."""
  return math.gcd(channels, 32)


def activation(x: jax.Array) -> jax.Array:
  return nn.silu(x)


def downsample_2x(x: jax.Array) -> jax.Array:
  """2×2 average pooling over the two spatial axes before channels (H, W); keeps D of volumes."""
  window = (1,) * (x.ndim - 4) + (2, 2)
  return nn.avg_pool(x, window, strides=window)


def downsample(x: jax.Array, factor: int) -> jax.Array:
  """factor×factor average pooling over H and W of (B, H, W, C)."""
  if factor == 1:
    return x
  return nn.avg_pool(x, (factor, factor), strides=(factor, factor))


def dilate(mask: jax.Array, radius: int) -> jax.Array:
  """Grey-level dilation of (B, H, W, C) by a (2 radius + 1)² square: the max over it."""
  if radius <= 0:
    return mask
  window = (2 * radius + 1, 2 * radius + 1)
  return nn.max_pool(mask, window, strides=(1, 1), padding='SAME')


def fill_holes(image: jax.Array, known: jax.Array) -> jax.Array:
  """Push-pull fill: every pixel gets the nearby known colour, blended smoothly into the holes.

  Known pixels are averaged down a pyramid of 2× poolings (weighted by `known`) and the holes
  are filled coarse to fine from the next coarser level, so a hole takes the colours of its
  border, as blurred as it is wide. A classical, parameter-free inpainting: the starting point
  the inpainter refines.

  Args:
    image: (B, H, W, C).
    known: (B, H, W, 1) in [0, 1], 1 where `image` is valid.

  Returns:
    (B, H, W, C) float32, equal to `image` where known == 1.
  """
  image = image.astype(jnp.float32)
  known = known.astype(jnp.float32)
  levels = [(image * known, known)]
  while min(levels[-1][0].shape[1:3]) > 1 and all(n % 2 == 0 for n in levels[-1][0].shape[1:3]):
    weighted, weight = levels[-1]
    levels.append((downsample(weighted, 2), downsample(weight, 2)))
  weighted, weight = levels[-1]
  filled = weighted / jnp.maximum(weight, 1e-6)
  for weighted, weight in reversed(levels[:-1]):
    coarse = jax.image.resize(filled, weighted.shape, 'linear')
    confident = jnp.clip(weight, 0.0, 1.0)
    filled = confident * weighted / jnp.maximum(weight, 1e-6) + (1.0 - confident) * coarse
  return known * image + (1.0 - known) * filled


def upsample_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2× upsampling of H and W ((B, H, W, C) or (B, D, H, W, C))."""
  return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


class VolumeConv(nn.Module):
  """A 3D convolution of (B, D, H, W, C), full or factorised ('2+1d').

  '2+1d' (R(2+1)D, Tran et al. 2018) is a k×k 2D convolution of every depth slice followed by a
  k-tap convolution along depth: fewer parameters, and on XLA:CPU, whose 3D convolutions are
  slow, about 10 times faster than a full k×k×k convolution (measured: 52 vs 5 ms for fwd+bwd of
  a 16-channel 3³ conv on a (4, 4, 32, 32) volume). Strides apply to H and W only.

  `depth_in_channels` computes the full 3D convolution (same parameters, same result) as one
  2D convolution (`DepthInChannelsConv`); `factorized` is a different layer.
  """

  features: int
  kernel: int = 3
  stride: int = 1
  factorized: bool = False
  depth_in_channels: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel, self.stride
    if not self.factorized:
      return conv_3d(
        self.features,
        (k, k, k),
        strides=(1, s, s),
        depth_in_channels=self.depth_in_channels,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        name='conv',
      )(x)
    batch, depth, height, width, channels = x.shape
    y = nn.Conv(self.features, (k, k), strides=(s, s), dtype=self.dtype, name='spatial')(
      x.reshape(batch * depth, height, width, channels)
    )
    height, width = y.shape[1:3]
    y = y.reshape(batch, depth, height * width, self.features)
    # Along depth as a (k, 1) 2D convolution: XLA:CPU's fast path.
    y = nn.Conv(
      self.features, (k, 1), dtype=self.dtype, kernel_init=self.kernel_init, name='depth'
    )(y)
    return y.reshape(batch, depth, height, width, self.features)


class DepthInChannelsConv(nn.Module):
  """A k×k×k 'SAME' convolution of (B, D, H, W, C) with strides (1, s, s), computed as one 2D
  convolution: the k depth-shifted copies of the input side by side as k*C channels, the depth
  folded into the batch. Same parameters as `nn.Conv(features, (k, k, k))` ('kernel'
  (k, k, k, C, O), 'bias' (O,)), same result.

  XLA:CPU runs 3D convolutions, and their gradients most of all, on a slow path (measured here:
  fwd+bwd of a 32-channel 3³ conv on a (2, 16, 64, 64) volume 1047 ms native, 412 ms this way);
  its 2D convolutions are fast. It holds k copies of the input for the backward pass, so
  accelerators, which run 3D convolutions well, keep `nn.Conv`.
  """

  features: int
  kernel_size: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    depth_taps, kernel_h, kernel_w = self.kernel_size
    if self.strides[0] != 1:
      raise ValueError(f'DepthInChannelsConv strides {self.strides}: depth stride must be 1.')
    batch, depth, height, width, channels = x.shape
    kernel = self.param(
      'kernel', self.kernel_init, (*self.kernel_size, channels, self.features), jnp.float32
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    low = (depth_taps - 1) // 2  # 'SAME' along depth at stride 1, as lax pads it.
    padded = jnp.pad(x, ((0, 0), (low, depth_taps - 1 - low), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate([padded[:, tap : tap + depth] for tap in range(depth_taps)], -1)
    # Channel tap * C + c of the stacked input meets kernel[tap, :, :, c].
    kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(
      kernel_h, kernel_w, depth_taps * channels, self.features
    )
    y = jax.lax.conv_general_dilated(
      stacked.reshape(batch * depth, height, width, depth_taps * channels),
      kernel_2d,
      self.strides[1:],
      'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    y = y + bias
    return y.reshape(batch, depth, *y.shape[1:])


def conv_3d(features: int, kernel_size, *, depth_in_channels: bool, **kwargs) -> nn.Module:
  """`nn.Conv(features, kernel_size, **kwargs)` of a volume, or the same convolution lowered to
  a 2D one (`DepthInChannelsConv`: same parameters, faster on XLA:CPU)."""
  conv = DepthInChannelsConv if depth_in_channels else nn.Conv
  return conv(features, tuple(kernel_size), **kwargs)


class ResBlock(nn.Module):
  """Pre-activation residual block (GroupNorm, SiLU, 3^n conv, twice) in 2D or 3D.

  Input (B, [D,] H, W, C_in) -> (B, [D,] H/s, W/s, features), s = 2 when `downsample` (2D
  stride over H, W only). `spatial_dims` is 2 for images and 3 for volumes.
  """

  features: int
  spatial_dims: int = 2
  downsample: bool = False
  factorized: bool = False  # 3D only: VolumeConv '2+1d'.
  depth_in_channels: bool = False  # 3D only: VolumeConv's lowering.
  dtype: Dtype = jnp.float32

  def _conv(self, name: str, stride: int = 1, kernel_init=nn.initializers.lecun_normal()):
    if self.spatial_dims == 3:
      return VolumeConv(
        self.features,
        stride=stride,
        factorized=self.factorized,
        depth_in_channels=self.depth_in_channels,
        dtype=self.dtype,
        kernel_init=kernel_init,
        name=name,
      )
    return nn.Conv(
      self.features,
      (3, 3),
      strides=(stride, stride),
      dtype=self.dtype,
      kernel_init=kernel_init,
      name=name,
    )

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    if self.downsample:
      shortcut = downsample_2x(shortcut)
    if shortcut.shape[-1] != self.features:
      if self.spatial_dims == 3:
        conv = functools.partial(conv_3d, depth_in_channels=self.depth_in_channels)
      else:
        conv = nn.Conv
      shortcut = conv(self.features, (1,) * self.spatial_dims, dtype=self.dtype, name='shortcut')(
        shortcut
      )
    y = nn.GroupNorm(num_groups(x.shape[-1]), dtype=self.dtype, name='norm1')(x)
    y = self._conv('conv1', stride=2 if self.downsample else 1)(activation(y))
    y = nn.GroupNorm(num_groups(self.features), dtype=self.dtype, name='norm2')(y)
    # Zero-initialised last conv: each block starts as the identity, which keeps deep stacks
    # stable at initialisation without normalising the residual sum.
    y = self._conv('conv2', kernel_init=nn.initializers.zeros)(activation(y))
    return (shortcut + y).astype(self.dtype)


class GatedConv(nn.Module):
  """Gated convolution (Yu et al., DeepFill v2): act(conv_f(x)) * sigmoid(conv_g(x)).

  The learned soft gate lets the layer ignore hole pixels. (B, H, W, C_in) ->
  (B, H/stride, W/stride, features).
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Conv(
      2 * self.features,
      (self.kernel_size, self.kernel_size),
      strides=(self.stride, self.stride),
      kernel_dilation=(self.dilation, self.dilation),
      dtype=self.dtype,
      name='conv',
    )(x)
    feature, gate = jnp.split(y, 2, axis=-1)
    return nn.elu(feature) * nn.sigmoid(gate)


class TransformerLayer(nn.Module):
  """Pre-LayerNorm transformer encoder layer over tokens (B, T, dim) -> (B, T, dim)."""

  num_heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    dim = tokens.shape[-1]
    y = nn.LayerNorm(dtype=self.dtype, name='norm1')(tokens)
    # Softmax in float32: bfloat16 logits lose the small differences between keys.
    y = nn.MultiHeadDotProductAttention(
      self.num_heads, dtype=self.dtype, force_fp32_for_softmax=True, name='attention'
    )(y, y)
    tokens = tokens + y
    y = nn.LayerNorm(dtype=self.dtype, name='norm2')(tokens)
    y = nn.Dense(self.mlp_ratio * dim, dtype=self.dtype, name='mlp1')(y)
    y = nn.Dense(dim, dtype=self.dtype, name='mlp2')(nn.gelu(y))
    return (tokens + y).astype(self.dtype)


def check_divisible(name: str, size: int, factor: int, why: str) -> None:
  if size % factor:
    raise ValueError(f'{name}={size} must be divisible by {factor} ({why}).')


def as_tuple(values: Sequence[int]) -> tuple[int, ...]:
  return tuple(int(v) for v in values)
