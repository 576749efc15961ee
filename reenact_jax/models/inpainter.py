"""Background inpainter I: gated-convolution U-Net that fills the hole the person leaves."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reenact_jax.models import layers


class GatedInpainter(nn.Module):
  """Source (B, H, W, 3), hole (B, H, W, 1) in [0, 1] and the classical fill of the hole
  (B, H, W, 3: `layers.fill_holes` of the known background) -> the background behind the hole
  (B, H, W, 3) float32 in [0, 1].

  The hole is where the source person is (its matte, dilated). The network sees only
  S * (1 - hole), the hole and the fill, and predicts a bounded correction (MAX_CORRECTION):
  fill + correction,
  meaningful inside the hole (the generator composites it where the moved person uncovers the
  background). An untrained inpainter returns the classical fill.
  Levels: one per entry of `channels`, each after the first at half the resolution; two dilated
  gated convs at the bottleneck widen the receptive field so large holes see their border.
  """

  channels: Sequence[int]
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, source: jax.Array, hole: jax.Array, fill: jax.Array) -> jax.Array:
    gated = layers.maybe_remat(layers.GatedConv, self.remat)
    hole = hole.astype(jnp.float32)
    hidden = source.astype(jnp.float32) * (1.0 - hole)
    fill = fill.astype(jnp.float32)
    x = jnp.concatenate([2.0 * hidden - 1.0, hole, 2.0 * fill - 1.0], axis=-1).astype(self.dtype)
    x = gated(self.channels[0], kernel_size=5, dtype=self.dtype, name='stem')(x)
    skips = [x]
    for level, width in enumerate(self.channels[1:], start=1):
      x = gated(width, stride=2, dtype=self.dtype, name=f'down{level}')(x)
      x = gated(width, dtype=self.dtype, name=f'conv{level}')(x)
      skips.append(x)
    for dilation in (2, 4):
      x = gated(self.channels[-1], dilation=dilation, dtype=self.dtype, name=f'dilated{dilation}')(
        x
      )
    for level in reversed(range(len(self.channels) - 1)):
      x = jnp.concatenate([layers.upsample_2x(x), skips[level]], axis=-1)
      x = gated(self.channels[level], dtype=self.dtype, name=f'up{level}')(x)
    correction = nn.Conv(
      3, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros, name='head'
    )(x).astype(jnp.float32)
    return jnp.clip(fill + MAX_CORRECTION * jnp.tanh(correction), 0.0, 1.0)


# The inpainter corrects the classical fill by at most this much per channel: what a moved head
# uncovers is mostly more of the background around it, and a briefly trained inpainter that
# may repaint freely paints the person it was trained to remove.
MAX_CORRECTION = 0.25
