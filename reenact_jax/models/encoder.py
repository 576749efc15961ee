"""Appearance encoder E: source image -> 3D feature volume f_S."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reenact_jax.models import layers


class AppearanceEncoder(nn.Module):
  """S (B, H, W, 3) in [0, 1] -> f_S (B, D, H/f, W/f, C), f = 2 ** (len(channels) - 1).

  A conv stem at full resolution, one 2× downsampling residual block per further entry of
  `channels`, a 1×1 conv to D * C channels, a reshape that unfolds the channels into depth, and
  one 3D residual block so that neighbouring depth slices exchange information (the reshape
  alone makes depth an arbitrary channel grouping).
  """

  channels: Sequence[int]
  volume_channels: int
  volume_depth: int
  factorized: bool = False  # The volume's 3D convolutions as (2+1)D (layers.VolumeConv).
  depth_in_channels: bool = False  # Their lowering (layers.VolumeConv).
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    res_block = layers.maybe_remat(layers.ResBlock, self.remat)
    # Centre the input: [0, 1] images -> [-1, 1].
    x = (2.0 * image - 1.0).astype(self.dtype)
    x = nn.Conv(self.channels[0], (7, 7), dtype=self.dtype, name='stem')(x)
    for level, features in enumerate(self.channels[1:]):
      x = res_block(features, downsample=True, dtype=self.dtype, name=f'down{level}')(x)
    x = nn.GroupNorm(layers.num_groups(x.shape[-1]), dtype=self.dtype, name='norm_out')(x)
    x = nn.Conv(
      self.volume_depth * self.volume_channels, (1, 1), dtype=self.dtype, name='to_volume'
    )(layers.activation(x))
    batch, height, width, _ = x.shape
    volume = x.reshape(batch, height, width, self.volume_depth, self.volume_channels)
    volume = jnp.transpose(volume, (0, 3, 1, 2, 4))
    return res_block(
      self.volume_channels,
      spatial_dims=3,
      factorized=self.factorized,
      depth_in_channels=self.depth_in_channels,
      dtype=self.dtype,
      name='volume_block',
    )(volume)
