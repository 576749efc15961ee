"""Multi-scale patch discriminator with spectral norm."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from reenact_jax.models import layers


class PatchDiscriminator(nn.Module):
  """One scale: 4×4 spectral-norm convs with leaky ReLU.

  Every entry of `channels` but the last halves the resolution (stride 2); the last is stride 1,
  then a 4×4 conv to one logit per patch.
  (B, h, w, 3) -> (features: list of (B, h_i, w_i, channels[i]), logits (B, h', w', 1) float32).
  """

  channels: Sequence[int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, update_stats: bool) -> tuple[list[jax.Array], jax.Array]:
    x = (2.0 * images - 1.0).astype(self.dtype)
    features = []
    for index, width in enumerate(self.channels):
      stride = 2 if index < len(self.channels) - 1 else 1
      conv = nn.Conv(width, (4, 4), strides=(stride, stride), dtype=self.dtype, name=f'conv{index}')
      x = nn.SpectralNorm(conv, name=f'sn{index}')(x, update_stats=update_stats)
      x = nn.leaky_relu(x, 0.2)
      features.append(x)
    conv = nn.Conv(1, (4, 4), dtype=self.dtype, name='logits')
    logits = nn.SpectralNorm(conv, name='sn_logits')(x, update_stats=update_stats)
    return features, logits.astype(jnp.float32)


class MultiScaleDiscriminator(nn.Module):
  """`num_scales` independent patch discriminators on the image at 1, 1/2, 1/4, ... resolution.

  `__call__(images (B, H, W, 3) in [0, 1], *, update_stats)` -> list over scales of
  (features list, logits (B, h, w, 1)). The spectral-norm power-iteration state lives in the
  'batch_stats' collection: pass `mutable=['batch_stats']` with update_stats=True in training.
  """

  channels: Sequence[int]
  num_scales: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, images: jax.Array, *, update_stats: bool
  ) -> list[tuple[list[jax.Array], jax.Array]]:
    outputs = []
    x = images
    for scale in range(self.num_scales):
      if scale:
        x = layers.downsample_2x(x)
      outputs.append(
        PatchDiscriminator(self.channels, dtype=self.dtype, name=f'scale{scale}')(
          x, update_stats=update_stats
        )
      )
    return outputs


def make_discriminator(model_config: ml_collections.ConfigDict) -> MultiScaleDiscriminator:
  """Builds the discriminator from `config.model` (disc_channels, disc_num_scales)."""
  if model_config.disc_num_scales < 1:
    raise ValueError(f'model.disc_num_scales={model_config.disc_num_scales} must be >= 1.')
  return MultiScaleDiscriminator(
    channels=layers.as_tuple(model_config.disc_channels),
    num_scales=int(model_config.disc_num_scales),
    dtype=layers.compute_dtype(model_config.compute_dtype),
  )
