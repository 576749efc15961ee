"""Fusion of several source views of one person: per-voxel weights over the sources.

Each source view gives its own feature volume warped to the driving pose. Where the driving face
is, a view that saw that part of the face squarely (geometry.facing of its landmarks, spread over
the volume around the driving landmarks) is the better one to show; off the face (hair, the
background behind the head) the primary view (the first source: its background is the output's)
wins. That is the geometric part of the logits and needs no weights, so a model trained with one
source can use several. A model trained with several (data.num_sources > 1, model.fusion_head)
adds a small learned head on each view's warped features.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from reenact_jax import geometry

# At the face the primary view keeps this margin of the facing cosine over the others: another
# view takes over only where it sees the surface clearly better, not to blend two near-equal
# views (a ghost of two slightly misaligned warps).
PRIMARY_MARGIN = 0.25
# A view whose face must move this far (normalised image units, the image spans 2) to reach the
# driving pose loses as much as one that sees the surface at a cosine 1 lower: of two views that
# both see a part, the one that needs less warping shows it (no resampling blur, no stretch), and
# a driving pose equal to a view's is that view itself.
MOTION_SCALE = 0.25
# Width of the learned head (per voxel, on each view's warped features).
HEAD_FEATURES = 16


def geometric_logits(
  source_landmarks: jax.Array,
  driving_landmarks: jax.Array,
  head_flow: jax.Array,
  num_sources: int,
  *,
  depth: int,
  height: int,
  width: int,
  sigma: float,
  sharpness: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(logits, facing, confidence), each (B K, D, H, W, 1), views flattened source-major inside
  each example (index b K + k; k = 0 the primary view).

  logits = sharpness * (facing + primary * (1 - confidence * (1 - PRIMARY_MARGIN))
                        - confidence * |head_flow_xy| / MOTION_SCALE),
  with facing the views' geometry.facing spread by geometry.landmark_field (its confidence: 1 on
  the face, 0 away from it) and head_flow (B K, D, H, W, 3) each view's prior head flow (how far
  its face moves to the driving pose). Data only (no gradient).
  """
  faces = geometry.facing(source_landmarks)[..., None]  # (B K, N, 1)
  field, confidence = geometry.landmark_field(
    driving_landmarks, faces, depth=depth, height=height, width=width, sigma=sigma
  )
  primary = (jnp.arange(source_landmarks.shape[0]) % num_sources == 0).astype(jnp.float32)
  primary = primary[:, None, None, None, None]
  bias = primary * (1.0 - confidence * (1.0 - PRIMARY_MARGIN))
  flow = jax.lax.stop_gradient(head_flow[..., :2].astype(jnp.float32))
  motion = jnp.sqrt(jnp.sum(jnp.square(flow), axis=-1, keepdims=True) + 1e-12) / MOTION_SCALE
  return sharpness * (field + bias - confidence * motion), field, confidence


class FusionHead(nn.Module):
  """A learned logit per voxel of each view: (B K, D, H, W, C) warped features with the facing
  and confidence fields -> (B K, D, H, W, 1), 0 at initialisation (the geometric weights)."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, warped: jax.Array, facing: jax.Array, confidence: jax.Array) -> jax.Array:
    x = jnp.concatenate(
      [warped.astype(self.dtype), facing.astype(self.dtype), confidence.astype(self.dtype)], -1
    )
    x = nn.relu(nn.Dense(HEAD_FEATURES, dtype=self.dtype, name='hidden')(x))
    logit = nn.Dense(1, dtype=self.dtype, kernel_init=nn.initializers.zeros, name='logit')(x)
    return logit.astype(jnp.float32)


def view_weights(logits: jax.Array, num_sources: int) -> jax.Array:
  """(B, K, ...) softmax over the views of (B K, ...) logits."""
  views = logits.reshape(-1, num_sources, *logits.shape[1:])
  return jax.nn.softmax(views.astype(jnp.float32), axis=1)


def pixel_weights(
  weights: jax.Array, visibility_logits: jax.Array, height: int, width: int
) -> jax.Array:
  """(B, K, height, width, 1): the views' voxel weights (B, K, D, h, w, 1) seen by each pixel
  (the depth slices weighted as geometry.project_flow weights them, by softmax over D of each
  view's (B K, D, h, w, 1) visibility logits), upsampled to the image, summing to 1 over K."""
  batch, views = weights.shape[:2]
  slices = jax.nn.softmax(visibility_logits.astype(jnp.float32), axis=1)
  slices = slices.reshape(batch, views, *slices.shape[1:])
  planar = jnp.sum(slices * weights, axis=2)  # (B, K, h, w, 1)
  planar = planar / jnp.maximum(jnp.sum(planar, axis=1, keepdims=True), 1e-6)
  if planar.shape[2:4] == (height, width):
    return planar
  return jax.image.resize(planar, (batch, views, height, width, 1), 'linear')
