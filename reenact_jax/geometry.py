"""Landmark geometry: similarity fits, the initial dense 3D facial flow, head pose.

Conventions (shared with the rest of the project): landmarks are (B, N, 3) float32 with x, y
normalised to [-1, 1] over the image (align_corners=False: pixel i's centre is at
(2 i + 1) / W - 1), z on the same scale as x and centred on the face; x -> width, y -> height
(down), z -> depth (away from the camera). Feature volumes span [-1, 1]^3 with the same
convention, so a landmark IS a position in the volume. Everything here is pure JAX, batched
and jit-able, with no learned weights.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reenact_jax import warp

_HIGHEST = jax.lax.Precision.HIGHEST


def similarity_transform(
  src: jax.Array, dst: jax.Array, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Least-squares similarity (Umeyama 1991) with dst ≈ scale * src @ rotation.T + translation.

  Args:
    src: (B, N, 3) points.
    dst: (B, N, 3) corresponding points.
    weights: optional (N,) or (B, N) non-negative per-point weights (None: all 1).

  Returns:
    scale (B,), rotation (B, 3, 3) proper (det = +1: a reflection is never returned, the
    smallest singular direction is flipped instead), translation (B, 3).
    Degenerate inputs (all src points equal) give scale 0 instead of NaN.
  """
  if src.shape != dst.shape or src.ndim != 3 or src.shape[-1] != 3:
    raise ValueError(
      f'src and dst must both be (B, N, 3); got src {src.shape} and dst {dst.shape}.'
    )
  src = src.astype(jnp.float32)
  dst = dst.astype(jnp.float32)
  if weights is None:
    weights = jnp.ones(src.shape[:2], jnp.float32)
  weights = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), src.shape[:2])
  weights = weights / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1e-12)

  src_mean = jnp.einsum('bn,bni->bi', weights, src, precision=_HIGHEST)
  dst_mean = jnp.einsum('bn,bni->bi', weights, dst, precision=_HIGHEST)
  src_centred = src - src_mean[:, None]
  dst_centred = dst - dst_mean[:, None]
  covariance = jnp.einsum('bn,bni,bnj->bij', weights, dst_centred, src_centred, precision=_HIGHEST)
  src_variance = jnp.einsum('bn,bni,bni->b', weights, src_centred, src_centred, precision=_HIGHEST)

  u, singular, vt = jnp.linalg.svd(covariance)
  # Reflection guard: if U V^T would be a reflection, flip the least significant axis.
  flip = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
  flip = jnp.where(flip == 0, 1.0, flip)
  correction = jnp.stack([jnp.ones_like(flip), jnp.ones_like(flip), flip], -1)  # (B, 3)
  rotation = jnp.einsum('bij,bj,bjk->bik', u, correction, vt, precision=_HIGHEST)
  scale = jnp.sum(singular * correction, -1) / jnp.maximum(src_variance, 1e-12)
  translation = dst_mean - scale[:, None] * jnp.einsum(
    'bij,bj->bi', rotation, src_mean, precision=_HIGHEST
  )
  return scale, rotation, translation


def apply_similarity(
  points: jax.Array, scale: jax.Array, rotation: jax.Array, translation: jax.Array
) -> jax.Array:
  """scale * points @ rotation.T + translation.

  Args:
    points: (B, ..., 3).
    scale: (B,); rotation: (B, 3, 3); translation: (B, 3).

  Returns:
    (B, ..., 3), same shape as points.
  """
  batch = points.shape[0]
  flat = points.reshape(batch, -1, 3)
  moved = jnp.einsum('bnj,bij->bni', flat, rotation, precision=_HIGHEST)
  moved = scale[:, None, None] * moved + translation[:, None, :]
  return moved.reshape(points.shape)


def invert_similarity(scale, rotation, translation):
  """Parameters of x = (y - t) @ R / s, the inverse of y = s x @ R.T + t (batched, (B,) ...).

  Works on numpy and JAX arrays alike.
  """
  inverse_translation = -(translation[:, None, :] @ rotation)[:, 0] / scale[:, None]
  return 1.0 / scale, rotation.swapaxes(-1, -2), inverse_translation


def _gaussian_1d(centres: jax.Array, positions: jax.Array, sigma: float) -> jax.Array:
  """exp(-(positions - centres)^2 / (2 sigma^2)): (B, N) centres, (S,) positions -> (B, S, N)."""
  delta = positions[None, :, None] - centres[:, None, :]
  return jnp.exp(-0.5 * jnp.square(delta / sigma))


def initial_flow(
  source_landmarks: jax.Array,
  driving_landmarks: jax.Array,
  *,
  depth: int,
  height: int,
  width: int,
  sigma: float,
  stable_indices: Sequence[int] | np.ndarray | jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Initial backward 3D facial flow from driving space to source space.

  Definition. With p a driving-space voxel centre (normalised (x, y, z), see
  `warp.identity_grid_3d`), L_S, L_D the source / driving landmarks:

    (s, R, t)  = similarity_transform(L_D[stable], L_S[stable])   # driving -> source, rigid
    q(p)       = s R p + t                                          # rigid head motion
    r_k        = L_S[k] - (s R L_D[k] + t)                         # non-rigid residual, (B, N, 3)
    w_k(p)     = exp(-|p - L_D[k]|^2 / (2 sigma^2))                 # Gaussian around L_D[k]
    W(p)       = sum_k w_k(p)
    confidence = min(1, W(p))
    residual   = sum_k w_k(p) r_k / max(1, W(p))
               = confidence * (sum_k w_k r_k / W)  (normalised Gaussian average of r_k)
    flow(p)    = q(p) + residual(p) - p

  so `warp_3d(source_volume, flow)` samples the source at q(p) + residual(p). Near the face
  (W >= 1, e.g. at every landmark, whose own weight is 1) the residual is the normalised
  Gaussian average of the nearby landmark residuals; far from the face it fades to 0 with
  the confidence, leaving the pure rigid motion. Written with max(1, W) the two cases are one
  formula without dividing by a vanishing W.

  Cost. The Gaussian is separable and the voxel centres form a tensor grid, so
  w_k(p) = gx[w, k] gy[h, k] gz[d, k] and sum_k w_k(p) [r_k, 1] is a contraction of small
  per-axis tables: first (B, D, W, N, 4) = gz * gx * [r, 1], then one matrix product with gy
  over N. That is O(B D W N) memory (8 MB for 16x64x64 voxels and 478 landmarks) instead of
  the O(B D H W N) of the direct form (125 MB), and the heavy part runs on the matrix unit.

  Args:
    source_landmarks: (B, N, 3) L_S.
    driving_landmarks: (B, N, 3) L_D.
    depth, height, width: volume size D, H, W (voxels).
    sigma: Gaussian radius, normalised units.
    stable_indices: (M,) indices of rigidly moving landmarks for the similarity fit.

  Returns:
    flow (B, D, H, W, 3) float32 normalised (dx, dy, dz); confidence (B, D, H, W, 1) in [0, 1].
    No gradient flows through this function (its inputs are data).
  """
  if source_landmarks.shape != driving_landmarks.shape or source_landmarks.ndim != 3:
    raise ValueError(
      'source_landmarks and driving_landmarks must both be (B, N, 3); got '
      f'{source_landmarks.shape} and {driving_landmarks.shape}.'
    )
  if sigma <= 0:
    raise ValueError(f'sigma must be > 0 (normalised units); got {sigma}.')
  # The prior is geometry of data, not something to learn through; stopping gradients also
  # keeps the SVD's derivative (undefined for repeated singular values) out of any backward.
  source = jax.lax.stop_gradient(source_landmarks.astype(jnp.float32))
  driving = jax.lax.stop_gradient(driving_landmarks.astype(jnp.float32))
  stable = jnp.asarray(stable_indices, jnp.int32)
  batch = source.shape[0]

  scale, rotation, translation = similarity_transform(driving[:, stable], source[:, stable])
  residuals = source - apply_similarity(driving, scale, rotation, translation)  # (B, N, 3)
  values = jnp.concatenate([residuals, jnp.ones_like(residuals[..., :1])], -1)  # (B, N, 4)

  grid = warp.identity_grid_3d(depth, height, width)  # (D, H, W, 3)
  xs, ys, zs = grid[0, 0, :, 0], grid[0, :, 0, 1], grid[:, 0, 0, 2]
  gx = _gaussian_1d(driving[..., 0], xs, sigma)  # (B, W, N)
  gy = _gaussian_1d(driving[..., 1], ys, sigma)  # (B, H, N)
  gz = _gaussian_1d(driving[..., 2], zs, sigma)  # (B, D, N)
  table = gz[:, :, None, :, None] * gx[:, None, :, :, None] * values[:, None, None]
  sums = jnp.einsum('bhn,bdwnc->bdhwc', gy, table, precision=_HIGHEST)  # (B, D, H, W, 4)
  total_weight = sums[..., 3:]
  residual = sums[..., :3] / jnp.maximum(total_weight, 1.0)
  confidence = jnp.clip(total_weight, 0.0, 1.0)

  rigid = apply_similarity(
    jnp.broadcast_to(grid, (batch, *grid.shape)), scale, rotation, translation
  )
  flow = rigid + residual - grid
  return flow, confidence


def head_pose(
  landmarks: jax.Array,
  canonical: jax.Array,
  stable_indices: Sequence[int] | np.ndarray | jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Similarity mapping the canonical face onto each observed face.

  Args:
    landmarks: (B, N, 3) observed.
    canonical: (N, 3) frontal neutral face (e.g. face_topology.canonical_landmarks()).
    stable_indices: (M,) indices of rigidly moving landmarks.

  Returns:
    scale (B,), rotation (B, 3, 3), translation (B, 3) with
    landmarks ≈ scale * canonical @ rotation.T + translation on the stable points.
  """
  stable = jnp.asarray(stable_indices, jnp.int32)
  observed = landmarks[:, stable].astype(jnp.float32)
  reference = jnp.broadcast_to(jnp.asarray(canonical, jnp.float32)[stable], observed.shape)
  return similarity_transform(reference, observed)


def euler_to_rotation(angles: jax.Array) -> jax.Array:
  """Inverse of `rotation_to_euler`: (B, 3) yaw, pitch, roll in degrees -> (B, 3, 3)."""
  yaw, pitch, roll = jnp.moveaxis(jnp.deg2rad(angles.astype(jnp.float32)), -1, 0)
  zeros, ones = jnp.zeros_like(yaw), jnp.ones_like(yaw)

  def matrix(rows):
    return jnp.stack([jnp.stack(row, -1) for row in rows], -2)

  cy, sy, cp, sp, cr, sr = (
    jnp.cos(yaw),
    jnp.sin(yaw),
    jnp.cos(pitch),
    jnp.sin(pitch),
    jnp.cos(roll),
    jnp.sin(roll),
  )
  about_x = matrix([[ones, zeros, zeros], [zeros, cp, -sp], [zeros, sp, cp]])
  about_y = matrix([[cy, zeros, sy], [zeros, ones, zeros], [-sy, zeros, cy]])
  about_z = matrix([[cr, -sr, zeros], [sr, cr, zeros], [zeros, zeros, ones]])
  return about_z @ about_y @ about_x


def rotation_to_euler(rotation: jax.Array) -> jax.Array:
  """Yaw, pitch, roll in degrees of R = Rz(roll) @ Ry(yaw) @ Rx(pitch).

  Axes are the landmark axes (x right, y down, z away from the camera): yaw turns about the
  vertical y axis, pitch about x, roll about the viewing axis z. Yaw is in [-90, 90].

  Args:
    rotation: (B, 3, 3) proper rotation.

  Returns:
    (B, 3) float32 (yaw, pitch, roll), degrees.
  """
  r = rotation.astype(jnp.float32)
  yaw = jnp.arctan2(-r[:, 2, 0], jnp.hypot(r[:, 2, 1], r[:, 2, 2]))
  pitch = jnp.arctan2(r[:, 2, 1], r[:, 2, 2])
  roll = jnp.arctan2(r[:, 1, 0], r[:, 0, 0])
  return jnp.rad2deg(jnp.stack([yaw, pitch, roll], -1))


__all__ = [
  'similarity_transform',
  'apply_similarity',
  'invert_similarity',
  'initial_flow',
  'head_pose',
  'rotation_to_euler',
  'euler_to_rotation',
]
