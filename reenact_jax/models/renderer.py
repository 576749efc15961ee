"""Foreground renderer R: TransUNet-style 2D U-Net with a transformer bottleneck."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reenact_jax.models import layers


class TokenBottleneck(nn.Module):
  """Transformer over patch tokens of a feature map, added back as a residual.

  (B, h, w, C) -> (B, h, w, C). Tokens: non-overlapping `patch`×`patch` patches embedded by a
  strided conv, plus a learned positional embedding (its shape fixes h and w at init).
  """

  num_layers: int
  num_heads: int
  patch: int
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, dim = x.shape
    rows, cols = height // self.patch, width // self.patch
    p = self.patch
    tokens = nn.Conv(dim, (p, p), strides=(p, p), dtype=self.dtype, name='embed')(x)
    tokens = tokens.reshape(batch, rows * cols, dim)
    position = self.param(
      'position_embedding', nn.initializers.normal(0.02), (1, rows * cols, dim), jnp.float32
    )
    tokens = tokens + position.astype(self.dtype)
    layer = layers.maybe_remat(layers.TransformerLayer, self.remat)
    for index in range(self.num_layers):
      tokens = layer(self.num_heads, dtype=self.dtype, name=f'layer{index}')(tokens)
    tokens = nn.LayerNorm(dtype=self.dtype, name='norm_out')(tokens)
    # Back to the map: each token predicts its p×p pixels (depth-to-space), zero-initialised so
    # the bottleneck starts as the identity.
    y = nn.Dense(dim * p * p, dtype=self.dtype, kernel_init=nn.initializers.zeros, name='unembed')(
      tokens
    )
    y = y.reshape(batch, rows, cols, p, p, dim).transpose(0, 1, 3, 2, 4, 5)
    return x + y.reshape(batch, height, width, dim)


class ForegroundRenderer(nn.Module):
  """Renders the driving-posed person: refines the source's own pixels moved by the flow and
  paints what they cannot show (the mouth interior, disocclusions), guided by the warped
  features.

  Inputs: projected features (B, h, w, C) and occlusion (B, h, w, 1) at h = H/4, and at full
  resolution the source warped by the projected 2D flow (B, H, W, 3), its validity (B, H, W, 1)
  (0 where the flow samples outside the source) and the warped source person matte (B, H, W, 1).

  Encoder: the features (times the occlusion) with the warped source, validity and matte
  averaged down to h, a conv at the input level (width `base_channels`), then `down_levels` 2×
  downsampling residual blocks (width doubling) to the bottleneck, a transformer ('transformer')
  or `num_layers` residual blocks ('resblocks'); the decoder climbs back with skip connections,
  then one 2× upsampling residual block per entry of `decoder_channels`, and a head at full
  resolution that also sees the warped source. Outputs, float32 in (0, 1):
    foreground = b * warped_source + (1 - b) * rgb, b = sigmoid(blend) * validity,
    rgb = sigmoid(paint + logit(warped_source)) with paint_from_warped, else sigmoid(paint);
    alpha = sigmoid(alpha_logit + ALPHA_PRIOR_GAIN * (warped_matte - 1/2)).
  The head's kernel starts at zero: an untrained renderer shows the warped source (b ~ 0.98)
  with the warped matte as alpha, i.e. the geometric warp itself, and learning refines it.
  """

  base_channels: int
  down_levels: int
  decoder_channels: Sequence[int]
  bottleneck: str
  num_layers: int
  num_heads: int
  token_patch: int
  # The painted colour starts from the warped source (its logit plus the head's output), not from
  # grey: an untrained renderer paints the hint it is given (the mouth's dark inside), and a
  # briefly trained one refines it instead of averaging to grey.
  paint_from_warped: bool = False
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    features: jax.Array,
    occlusion: jax.Array,
    warped_source: jax.Array,
    validity: jax.Array,
    warped_matte: jax.Array,
  ) -> tuple[jax.Array, jax.Array]:
    res_block = layers.maybe_remat(layers.ResBlock, self.remat)
    occlusion = occlusion.astype(self.dtype)
    guide = jnp.concatenate([2.0 * warped_source - 1.0, validity, warped_matte], axis=-1).astype(
      jnp.float32
    )
    factor = guide.shape[1] // features.shape[1]
    guide_small = layers.downsample(guide, factor).astype(self.dtype)
    # Modulation: occluded regions carry no trustworthy warped content; the occlusion channel
    # itself tells the renderer where it must hallucinate instead.
    x = jnp.concatenate([features.astype(self.dtype) * occlusion, occlusion, guide_small], axis=-1)
    x = nn.Conv(self.base_channels, (3, 3), dtype=self.dtype, name='stem')(x)
    x = res_block(self.base_channels, dtype=self.dtype, name='enc0')(x)
    skips = [x]
    for level in range(1, self.down_levels + 1):
      x = res_block(
        self.base_channels * 2**level, downsample=True, dtype=self.dtype, name=f'enc{level}'
      )(x)
      skips.append(x)
    if self.bottleneck == 'transformer':
      x = TokenBottleneck(
        self.num_layers,
        self.num_heads,
        self.token_patch,
        remat=self.remat,
        dtype=self.dtype,
        name='bottleneck',
      )(x)
    elif self.bottleneck == 'resblocks':
      for index in range(self.num_layers):
        x = res_block(x.shape[-1], dtype=self.dtype, name=f'bottleneck{index}')(x)
    else:
      raise ValueError(
        f"model.renderer_bottleneck={self.bottleneck!r}; use 'transformer' or 'resblocks'."
      )
    for level in reversed(range(self.down_levels)):
      x = jnp.concatenate([layers.upsample_2x(x), skips[level]], axis=-1)
      x = res_block(skips[level].shape[-1], dtype=self.dtype, name=f'dec{level}')(x)
    for index, width in enumerate(self.decoder_channels):
      x = res_block(width, dtype=self.dtype, name=f'up{index}')(layers.upsample_2x(x))
    x = layers.activation(
      nn.GroupNorm(layers.num_groups(x.shape[-1]), dtype=self.dtype, name='norm_out')(x)
    )
    x = jnp.concatenate([x, guide.astype(self.dtype)], axis=-1)
    x = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, name='refine')(x)
    out = nn.Conv(5, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros, name='head')(
      layers.activation(x)
    ).astype(jnp.float32)
    paint = out[..., :3]
    if self.paint_from_warped:
      hint = jnp.clip(warped_source.astype(jnp.float32), PAINT_HINT_CLIP, 1.0 - PAINT_HINT_CLIP)
      paint = paint + jnp.log(hint) - jnp.log1p(-hint)
    rgb = nn.sigmoid(paint)
    blend = nn.sigmoid(out[..., 3:4] + BLEND_BIAS) * validity.astype(jnp.float32)
    foreground = blend * warped_source.astype(jnp.float32) + (1.0 - blend) * rgb
    alpha = nn.sigmoid(out[..., 4:] + ALPHA_PRIOR_GAIN * (warped_matte.astype(jnp.float32) - 0.5))
    return foreground, alpha


# The warped source as the painting's starting point is clipped to (PAINT_HINT_CLIP, 1 - it):
# its logit stays finite (+-4.6) and the head can still move it either way.
PAINT_HINT_CLIP = 0.01

# The untrained renderer trusts the warped source pixels (sigmoid(4) = 0.98) and takes the warped
# source matte as its alpha (sigmoid(+-4) at matte 1 / 0).
BLEND_BIAS = 4.0
ALPHA_PRIOR_GAIN = 8.0
