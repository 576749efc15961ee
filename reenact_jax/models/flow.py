"""3D flow prediction network F: a 3D U-Net hourglass that corrects the prior."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reenact_jax import warp
from reenact_jax.models import layers


class FlowHourglass3D(nn.Module):
  """Residual 3D flow, occlusion and depth visibility from the source volume and the prior.

  Input to the U-Net: concat[c, warp_3d(c, flow_prior), flow_prior, confidence] where
  c = 1×1×1 conv of the source volume to `compress_channels` (warping the compressed volume
  instead of the full one is what makes the prior-warped input cheap).
  Levels: one residual block per entry of `channels`; every level after the first halves H and
  W (depth is kept: it is small, 16 at 256×256, and the flow varies least along it).
  """

  channels: Sequence[int]
  compress_channels: int
  residual_scale: float
  factorized: bool = False  # 3D convolutions as (2+1)D (layers.VolumeConv).
  depth_in_channels: bool = False  # Their lowering (layers.VolumeConv).
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, volume: jax.Array, flow_prior: jax.Array, confidence: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Predicts the final flow.

    Args:
      volume: (B, D, H, W, C) source-space feature volume.
      flow_prior: (B, D, H, W, 3) backward flow (dx, dy, dz), normalised units.
      confidence: (B, D, H, W, 1) in [0, 1], where the prior is reliable.

    Returns:
      flow: (B, D, H, W, 3) float32, flow_prior + residual (|residual| < residual_scale).
      occlusion: (B, H, W, 1) float32 in (0, 1); 1 = visible in the source.
      visibility: (B, D, H, W, 1) float32 logits: the learned part of the per-pixel depth
        weights with which the 3D flow is projected to 2D (geometry.project_flow).
    """
    res_block = layers.maybe_remat(layers.ResBlock, self.remat)
    flow_prior = flow_prior.astype(jnp.float32)
    compressed = layers.conv_3d(
      self.compress_channels,
      (1, 1, 1),
      depth_in_channels=self.depth_in_channels,
      dtype=self.dtype,
      name='compress',
    )(volume.astype(self.dtype))
    warped = warp.warp_3d(compressed, flow_prior).astype(self.dtype)
    x = jnp.concatenate(
      [compressed, warped, flow_prior.astype(self.dtype), confidence.astype(self.dtype)], axis=-1
    )
    conv = lambda features, name, **kwargs: layers.VolumeConv(
      features,
      factorized=self.factorized,
      depth_in_channels=self.depth_in_channels,
      dtype=self.dtype,
      name=name,
      **kwargs,
    )
    x = conv(self.channels[0], 'stem')(x)
    skips = []
    for level, features in enumerate(self.channels):
      x = res_block(
        features,
        spatial_dims=3,
        downsample=level > 0,
        factorized=self.factorized,
        depth_in_channels=self.depth_in_channels,
        dtype=self.dtype,
        name=f'down{level}',
      )(x)
      skips.append(x)
    for level in reversed(range(len(self.channels) - 1)):
      x = layers.upsample_2x(x)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = res_block(
        self.channels[level],
        spatial_dims=3,
        factorized=self.factorized,
        depth_in_channels=self.depth_in_channels,
        dtype=self.dtype,
        name=f'up{level}',
      )(x)
    x = layers.activation(
      nn.GroupNorm(layers.num_groups(x.shape[-1]), dtype=self.dtype, name='norm_out')(x)
    )
    # Near-zero head: at initialisation the geometric prior alone drives the warp, and the
    # network learns only the correction.
    residual = conv(
      3,
      'residual_head',
      kernel_init=nn.initializers.variance_scaling(1e-4, 'fan_in', 'truncated_normal'),
    )(x)
    residual = jnp.tanh(residual.astype(jnp.float32)) * self.residual_scale
    # Occlusion is a property of the 2D image: pool the volume over depth, then a 2D conv.
    pooled = jnp.mean(x, axis=1)
    occlusion_logits = nn.Conv(
      1,
      (3, 3),
      dtype=self.dtype,
      # Start mostly "visible" (sigmoid(2) = 0.88) so the renderer sees the warped features.
      bias_init=nn.initializers.constant(2.0),
      name='occlusion_head',
    )(pooled)
    occlusion = nn.sigmoid(occlusion_logits.astype(jnp.float32))
    # Per-voxel visibility logits (which depth slice a pixel shows), added to the prior's;
    # zero-initialised so that the prior alone decides at first.
    visibility = conv(1, 'visibility_head', kernel_init=nn.initializers.zeros)(x)
    visibility = visibility.astype(jnp.float32)
    return flow_prior + residual, occlusion, visibility
