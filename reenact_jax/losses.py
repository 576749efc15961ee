"""Small pure loss functions. Every one returns a float32 scalar; weights live in the config.

Images are (B, H, W, 3) in [0, 1]; masks are (B, H, W, 1) in {0, 1}.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def l1(*, prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error over all elements."""
  return jnp.mean(jnp.abs(_f32(prediction) - _f32(target)))


def weighted_l1(*, prediction: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """sum(weight * |prediction - target|) / (sum(weight) * channels).

  `weight` is (B, H, W, 1) and broadcasts over channels. The normalisation makes the value
  a per-pixel mean over the weighted area, so it does not scale with the area's size.
  """
  error = jnp.abs(_f32(prediction) - _f32(target)) * _f32(weight)
  channels = prediction.shape[-1]
  denominator = jnp.sum(jnp.broadcast_to(_f32(weight), error.shape[:-1] + (1,))) * channels
  return jnp.sum(error) / jnp.maximum(denominator, 1e-6)


def resize_to(images: jax.Array, height: int, width: int) -> jax.Array:
  """Area-like downsampling (B, H, W, C) -> (B, height, width, C) ('linear' with antialias)."""
  if images.shape[1:3] == (height, width):
    return images
  return jax.image.resize(
    images, images.shape[:1] + (height, width) + images.shape[3:], 'linear', antialias=True
  )


def cyclic_warp(
  *,
  projected: jax.Array,
  projected_cycle: jax.Array,
  source: jax.Array,
  driving: jax.Array,
  source_mask: jax.Array,
  driving_mask: jax.Array,
  face_weight: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """The cyclic warp loss of 3DFlowRenderer, as (forward, backward) terms.

  Definition (h × w is the projected resolution, H/4 × W/4; `↓` is area downsampling to it):
    forward  = weighted_l1(P(warp(f_S, w_{S→D})), D↓, weight = 1 + face_weight · M_D↓)
    backward = weighted_l1(P(warp(warp(f_S, w_{S→D}), w_{D→S})), S↓,
                           weight = 1 + face_weight · M_S↓)
  where P is the projection + RGB head and w_{D→S} is the flow network run with the roles of
  source and driving swapped on the warped volume. Forward makes the flow move content so that
  the warped features show the driving frame; backward makes the two flows invert each other,
  so the flow cannot hide content that a decoder would have to re-create.

  Args:
    projected: (B, h, w, 3) RGB of the warped volume.
    projected_cycle: (B, h, w, 3) RGB of the volume warped there and back.
    source, driving: (B, H, W, 3) frames.
    source_mask, driving_mask: (B, H, W, 1) face masks.
  """
  height, width = projected.shape[1:3]
  driving_small = resize_to(driving, height, width)
  source_small = resize_to(source, height, width)
  driving_weight = 1.0 + face_weight * resize_to(driving_mask, height, width)
  source_weight = 1.0 + face_weight * resize_to(source_mask, height, width)
  forward = weighted_l1(prediction=projected, target=driving_small, weight=driving_weight)
  backward = weighted_l1(prediction=projected_cycle, target=source_small, weight=source_weight)
  return forward, backward


def alpha_matte(*, alpha: jax.Array, mask: jax.Array) -> jax.Array:
  """L1 between the predicted alpha (B, H, W, 1) and the driving face mask."""
  return l1(prediction=alpha, target=mask)


def inpaint(
  *, background: jax.Array, driving: jax.Array, source_mask: jax.Array, driving_mask: jax.Array
) -> jax.Array:
  """L1 on the uncovered region M_S ∖ M_D, where the driving frame shows the true background.

  Zero when the region is empty (the face did not move away from any pixel).
  """
  uncovered = _f32(source_mask) * (1.0 - _f32(driving_mask))
  return weighted_l1(prediction=background, target=driving, weight=uncovered)


def hinge_discriminator(
  *, real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]
) -> jax.Array:
  """Hinge loss of a multi-scale discriminator: mean over scales of relu(1-r) + relu(1+f)."""
  terms = [
    jnp.mean(jax.nn.relu(1.0 - _f32(r))) + jnp.mean(jax.nn.relu(1.0 + _f32(f)))
    for r, f in zip(real_logits, fake_logits, strict=True)
  ]
  return sum(terms) / len(terms)


def hinge_generator(*, fake_logits: Sequence[jax.Array]) -> jax.Array:
  """Generator side of the hinge GAN: mean over scales of -D(fake)."""
  return sum(-jnp.mean(_f32(f)) for f in fake_logits) / len(fake_logits)


def feature_matching(
  *,
  real_features: Sequence[Sequence[jax.Array]],
  fake_features: Sequence[Sequence[jax.Array]],
) -> jax.Array:
  """L1 between discriminator features of real and generated images, mean over layers/scales.

  The real features are treated as constants.
  """
  terms = []
  for real_scale, fake_scale in zip(real_features, fake_features, strict=True):
    for real, fake in zip(real_scale, fake_scale, strict=True):
      terms.append(l1(prediction=fake, target=jax.lax.stop_gradient(real)))
  return sum(terms) / len(terms)
