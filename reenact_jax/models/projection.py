"""Projection P: 3D feature volume -> 2D features and a low-resolution RGB image."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from reenact_jax.models import layers


class Projection(nn.Module):
  """Folds depth into channels, 1×1 conv, and a light RGB head.

  (B, D, H, W, C) -> features (B, H, W, features) in the compute dtype and
  rgb (B, H, W, 3) float32 in (0, 1).
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, volume: jax.Array) -> tuple[jax.Array, jax.Array]:
    batch, depth, height, width, channels = volume.shape
    folded = jnp.transpose(volume, (0, 2, 3, 1, 4)).reshape(batch, height, width, depth * channels)
    x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name='fold')(folded.astype(self.dtype))
    x = layers.activation(x)
    rgb = nn.Conv(max(self.features // 4, 8), (3, 3), dtype=self.dtype, name='rgb1')(x)
    rgb = nn.Conv(3, (3, 3), dtype=self.dtype, name='rgb2')(layers.activation(rgb))
    return x, nn.sigmoid(rgb.astype(jnp.float32))
