"""Small pure loss functions. Every one returns a float32 scalar; weights live in the config.

Images are (B, H, W, 3) in [0, 1]; masks (face ovals) are (B, H, W, 1) in {0, 1}; mattes
(person) are (B, H, W, 1) in [0, 1].
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def l1(*, prediction: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Mean absolute error over all elements, each times `weight` (broadcast) when given."""
  error = jnp.abs(_f32(prediction) - _f32(target))
  return jnp.mean(error if weight is None else error * _f32(weight))


def weighted_l1(*, prediction: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """sum(weight * |prediction - target|) / (sum(weight) * channels).

  `weight` is (B, H, W, 1) and broadcasts over channels. The normalisation makes the value
  a per-pixel mean over the weighted area, so it does not scale with the area's size.
  """
  error = jnp.abs(_f32(prediction) - _f32(target)) * _f32(weight)
  channels = prediction.shape[-1]
  denominator = jnp.sum(jnp.broadcast_to(_f32(weight), error.shape[:-1] + (1,))) * channels
  return jnp.sum(error) / jnp.maximum(denominator, 1e-6)


def unsupervised_mouth(*, unseen_mouth: jax.Array, made_pair: jax.Array) -> jax.Array:
  """(B, H, W, 1) where the driving frame must not supervise the output: the unseen mouth
  (models.unseen_mouth, (B, H, W, 1)) of pairs made by moving a still image (made_pair (B,) 1:
  pseudo-pairs, synthetic clips). Such a driving frame shows the source's lips and teeth
  stretched across the opening, not a mouth's inside, and would teach the renderer to paint
  that."""
  return _f32(made_pair)[:, None, None, None] * _f32(unseen_mouth)


def reconstruction_target(*, driving: jax.Array, output: jax.Array, unsupervised: jax.Array):
  """The driving frame (B, H, W, 3), with the output itself (without gradient) where
  `unsupervised` (B, H, W, 1) is: the target of a loss that cannot be masked (perceptual)."""
  keep = 1.0 - _f32(unsupervised)
  return keep * _f32(driving) + (1.0 - keep) * jax.lax.stop_gradient(_f32(output))


def flow_error(*, flow: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted mean end-point error, in pixels, of an image flow (B, H, W, 2) in normalised units
  (1 = half the image width) against the true flow; `weight` (B, H, W, 1) is where it is known.

  Charbonnier (sqrt(d^2 + 0.01)): smooth at d = 0, so the gradient stays bounded as the error
  vanishes.
  """
  pixels = flow.shape[2] / 2.0
  difference = (_f32(flow) - _f32(target)) * pixels
  distance = jnp.sqrt(jnp.sum(jnp.square(difference), axis=-1, keepdims=True) + 0.01)
  weight = _f32(weight)
  return jnp.sum(distance * weight) / jnp.maximum(jnp.sum(weight), 1e-6)


def resize_to(images: jax.Array, height: int, width: int) -> jax.Array:
  """Area-like downsampling (B, H, W, C) -> (B, height, width, C) ('linear' with antialias)."""
  if images.shape[1:3] == (height, width):
    return images
  return jax.image.resize(
    images, images.shape[:1] + (height, width) + images.shape[3:], 'linear', antialias=True
  )


def keep_source_weight(
  *, validity: jax.Array, driving_mask: jax.Array, moved_occluder: jax.Array
) -> jax.Array:
  """Where the renderer must keep the warped source: valid pixels of the driving face, except
  where a synthetic occluder pasted on the source lands (moved_occluder: its coverage warped
  like the source), which the driving frame does not show and the renderer must paint over."""
  return _f32(validity) * _f32(driving_mask) * (1.0 - jnp.clip(_f32(moved_occluder), 0.0, 1.0))


def cyclic_warp(
  *,
  projected: jax.Array,
  projected_cycle: jax.Array,
  source: jax.Array,
  driving: jax.Array,
  source_weight: jax.Array,
  driving_weight: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """The cyclic warp loss of 3DFlowRenderer, as (forward, backward) terms.

  Definition (h × w is the projected resolution, H/4 × W/4; `↓` is area downsampling to it):
    forward  = weighted_l1(P(warp(f_S, w_{S→D})), D↓, weight = driving_weight↓)
    backward = weighted_l1(P(warp(warp(f_S, w_{S→D}), w_{D→S})), S↓, weight = source_weight↓)
  where P is the projection + RGB head and w_{D→S} is the flow network run with the roles of
  source and driving swapped on the warped volume. Forward makes the flow move content so that
  the warped features show the driving frame; backward makes the two flows invert each other,
  so the flow cannot hide content that a decoder would have to re-create.

  Args:
    projected: (B, h, w, 3) RGB of the warped volume.
    projected_cycle: (B, h, w, 3) RGB of the volume warped there and back.
    source, driving: (B, H, W, 3) frames.
    source_weight, driving_weight: (B, H, W, 1) per-pixel weights (`person_weight`).
  """
  height, width = projected.shape[1:3]
  forward = weighted_l1(
    prediction=projected,
    target=resize_to(driving, height, width),
    weight=resize_to(driving_weight, height, width),
  )
  backward = weighted_l1(
    prediction=projected_cycle,
    target=resize_to(source, height, width),
    weight=resize_to(source_weight, height, width),
  )
  return forward, backward


def person_weight(*, matte: jax.Array, mask: jax.Array, face_weight: float) -> jax.Array:
  """1 + matte + face_weight * mask: the background counts, the person twice, the face more."""
  return 1.0 + _f32(matte) + face_weight * _f32(mask)


def alpha_matte(*, alpha: jax.Array, matte: jax.Array) -> jax.Array:
  """L1 between the predicted alpha (B, H, W, 1) and the driving person matte."""
  return l1(prediction=alpha, target=matte)


def inpaint(*, background: jax.Array, driving: jax.Array, hole: jax.Array, driving_matte):
  """L1 of the inpainted background where the driving frame shows the true background: inside
  the source person's hole (B, H, W, 1) but outside the driving person (its matte, soft).

  Zero when that region is empty (the person did not move away from any pixel).
  """
  uncovered = _f32(hole) * (1.0 - _f32(driving_matte))
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
