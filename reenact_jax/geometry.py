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

from reenact_jax import face_topology, warp

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


# The head (face, hair, ears) in the canonical face's units (face_topology): two half-ellipses
# about one centre, relative to the face oval's box centre and half-extents. Above the centre it
# reaches far (voluminous hair, as in the bundled portrait, is head and must move with it; the
# person matte bounds it to the person); below it, the lower half ends a little under the chin
# so that the neck fades out and the shoulders stay out.
HEAD_CENTRE = (0.0, -0.2)  # Offset of the head centre, in oval half-widths / half-heights.
HEAD_RADII_ABOVE = (1.9, 2.1)  # Radii of the upper half, in oval half-widths / half-heights.
HEAD_RADII_BELOW = (1.9, 1.45)  # Radii of the lower half (the same width: no step at the centre).
HEAD_SOFTNESS = 0.12  # The region falls from 1 to 0 over this band of the elliptic radius.


# The neck follows the head: the region where the person below the head (neck, collar) moves with
# the head's flow, fading from all of it just under the chin to none at the shoulders, so that a
# moving head stretches the neck instead of leaving a gap between chin and neck. The same centre;
# below it an ellipse NECK_RADII_BELOW wide and deep, soft over NECK_SOFTNESS of its radius
# (it starts to fade where the head region ends, 1.45 oval half-heights below the centre, and
# ends 2.05 below it, about where the shoulders begin).
NECK_RADII_BELOW = (1.6, 1.75)
NECK_SOFTNESS = 0.17
# Around the rest of the head the person follows the head fully as far as the head region
# reaches (its soft edge included, whose hair is partly head and partly rest), fading to no
# motion over HEAD_FOLLOW_SOFTNESS outside it: a flow that fell off with the head region would
# smear the hair at its edge between the moved head and its old place.
HEAD_FOLLOW_SOFTNESS = 0.08


def _canonical_region(radii_above, radii_below) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(centre, radii above, radii below) of a head-centred region in canonical units."""
  oval = face_topology.canonical_landmarks()[face_topology.FACE_OVAL, :2].astype(np.float64)
  low, high = oval.min(axis=0), oval.max(axis=0)
  half = (high - low) / 2
  centre = (low + high) / 2 + np.asarray(HEAD_CENTRE) * half
  above, below = (np.asarray(radii) * half for radii in (radii_above, radii_below))
  return centre.astype(np.float32), above.astype(np.float32), below.astype(np.float32)


def head_region(landmarks: jax.Array, height: int, width: int) -> jax.Array:
  """Soft region of the head (face, hair, ears) of a face, from its landmarks alone.

  The canonical head (HEAD_CENTRE, HEAD_RADII_ABOVE and _BELOW around the canonical face oval)
  placed by the in-plane similarity (scale, roll, shift) that maps the canonical face's stable
  landmarks onto the face's. Multiplied with a person matte it separates the head, which moves
  with the skull, from the torso and the background, which do not.

  Args:
    landmarks: (B, N, 3) normalised.
    height, width: output size (pixels of the image or voxels of the volume).

  Returns:
    (B, height, width) float32 in [0, 1]; 1 inside the head, 0 outside, soft in between.
  """
  canonical_xy = _canonical_xy(landmarks, height, width)
  return _region(canonical_xy, HEAD_RADII_ABOVE, HEAD_RADII_BELOW, HEAD_SOFTNESS)


def neck_region(landmarks: jax.Array, height: int, width: int) -> jax.Array:
  """(B, height, width) float32 in [0, 1]: how much of the head's motion the person follows
  (NECK_RADII_BELOW, NECK_SOFTNESS, HEAD_FOLLOW_SOFTNESS): 1 on the whole head region and just
  under the chin, fading down the neck to 0 at the shoulders and just outside the head region
  elsewhere. Placed as head_region is."""
  canonical_xy = _canonical_xy(landmarks, height, width)
  # The head's whole support (elliptic radius 1 + HEAD_SOFTNESS) inside the 1-zone of a larger
  # copy of it.
  grow = (1.0 + HEAD_SOFTNESS) / (1.0 - HEAD_FOLLOW_SOFTNESS)
  around = _region(
    canonical_xy,
    tuple(grow * r for r in HEAD_RADII_ABOVE),
    tuple(grow * r for r in HEAD_RADII_BELOW),
    HEAD_FOLLOW_SOFTNESS,
  )
  below = _region(canonical_xy, HEAD_RADII_ABOVE, NECK_RADII_BELOW, NECK_SOFTNESS)
  return jnp.maximum(around, below)


def _canonical_xy(landmarks: jax.Array, height: int, width: int) -> jax.Array:
  """(B, height, width, 2) each pixel in the canonical face's units: the inverse of the in-plane
  similarity (scale, roll, shift) that maps the canonical stable landmarks onto `landmarks`'."""
  stable = np.asarray(face_topology.STABLE)
  canonical = face_topology.canonical_landmarks()[stable].astype(np.float32)
  observed = jax.lax.stop_gradient(landmarks[:, stable].astype(jnp.float32))
  flat = lambda points: points.at[..., 2].set(0.0)  # In-plane: drop depth.
  reference = jnp.broadcast_to(flat(jnp.asarray(canonical)), observed.shape)
  scale, rotation, translation = similarity_transform(reference, flat(observed))
  grid = warp.identity_grid_2d(height, width)  # (H, W, 2)
  # Back to canonical units: q = R^T (p - t) / s, in the image plane.
  offset = grid[None] - translation[:, None, None, :2]
  return jnp.einsum('bhwi,bij->bhwj', offset, rotation[:, :2, :2]) / scale[:, None, None, None]


def _region(canonical_xy: jax.Array, radii_above, radii_below, softness) -> jax.Array:
  """A head-centred soft region (two half-ellipses about HEAD_CENTRE, radii in oval half-sizes,
  softness in elliptic radius) at pixels given in canonical units (_canonical_xy)."""
  centre, above, below = _canonical_region(radii_above, radii_below)
  offset = canonical_xy - centre
  radii = jnp.where(offset[..., 1:] < 0, above, below)  # Image y grows downwards.
  radius = jnp.sqrt(jnp.sum(jnp.square(offset / radii), axis=-1))
  return jnp.clip((1.0 + softness - radius) / (2 * softness), 0.0, 1.0)


# Sub-pixel samples per axis of polygon_mask (its edges are antialiased over this many levels²).
POLYGON_SUPERSAMPLING = 2


def polygon_mask(polygon: jax.Array, height: int, width: int) -> jax.Array:
  """Soft filled polygon: the fraction of each pixel inside a closed polygon (even-odd rule).

  Each pixel is sampled at POLYGON_SUPERSAMPLING² points; a point is inside where a ray from it
  towards +x crosses the polygon's edges an odd number of times. Agrees with
  crops.mask_from_polygon (the host rasteriser) up to the edge pixels.

  Args:
    polygon: (B, K, 2) vertices (x, y), normalised units, in order (the last joins the first).
    height, width: output size, pixels.

  Returns:
    (B, height, width) float32 in [0, 1], no gradient (a mask of given landmarks).
  """
  polygon = jax.lax.stop_gradient(polygon.astype(jnp.float32))
  n = POLYGON_SUPERSAMPLING
  points = warp.identity_grid_2d(height * n, width * n).reshape(-1, 1, 2)  # (P, 1, 2)
  start = polygon[:, None]  # (B, 1, K, 2)
  end = jnp.roll(polygon, -1, axis=1)[:, None]
  x, y = points[None, ..., 0], points[None, ..., 1]  # (1, P, 1)
  spans = (start[..., 1] > y) != (end[..., 1] > y)
  dy = end[..., 1] - start[..., 1]
  safe_dy = jnp.where(spans, dy, 1.0)
  crossing_x = start[..., 0] + (y - start[..., 1]) * (end[..., 0] - start[..., 0]) / safe_dy
  crossings = jnp.sum(spans & (x < crossing_x), axis=-1)  # (B, P)
  inside = (crossings % 2).astype(jnp.float32).reshape(-1, height, n, width, n)
  return jnp.mean(inside, axis=(2, 4))


# The inpainter's hole is the source person grown by this fraction of the image side (the matte's
# soft edge and the hair's wisps are refilled too, not left as a halo).
HOLE_DILATION = 0.02


def hole_radius(height: int) -> int:
  """HOLE_DILATION of an image `height` pixels high, in whole pixels (at least 1)."""
  return max(1, round(HOLE_DILATION * height))


def hole_of(source_matte: jax.Array) -> jax.Array:
  """(B, H, W, 1) float32: the source person matte grown by HOLE_DILATION of the side (a max over
  a square), the region whose background the inpainter fills."""
  radius = hole_radius(source_matte.shape[1])
  window = (1, 2 * radius + 1, 2 * radius + 1, 1)
  return jax.lax.reduce_window(
    source_matte.astype(jnp.float32), -jnp.inf, jax.lax.max, window, (1, 1, 1, 1), 'SAME'
  )


def _gaussian_1d(centres: jax.Array, positions: jax.Array, sigma) -> jax.Array:
  """exp(-(positions - centres)^2 / (2 sigma^2)): (B, N) centres, (S,) positions -> (B, S, N);
  sigma a float or (B, 1, 1)."""
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
  source_head: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Initial backward 3D facial flow from driving space to source space.

  Definition. With p a driving-space voxel centre (normalised (x, y, z), see
  `warp.identity_grid_3d`), L_S, L_D the source / driving landmarks and H_S the source's head
  weight (1 on the head: face, hair, ears; 0 on the torso and the background):

    (s, R, t)  = similarity_transform(L_D[stable], L_S[stable])   # driving -> source, rigid
    q(p)       = s R p + t                                          # rigid head motion
    h(p)       = H_S(q(p)_xy)                                       # p's pre-image on the head?
    r_k        = L_S[k] - (s R L_D[k] + t)                         # non-rigid residual, (B, N, 3)
    w_k(p)     = exp(-|p - L_D[k]|^2 / (2 sigma^2))                 # Gaussian around L_D[k]
    W(p)       = sum_k w_k(p)
    confidence = min(1, W(p))
    residual   = sum_k w_k(p) r_k / max(1, W(p))
               = confidence * (sum_k w_k r_k / W)  (normalised Gaussian average of r_k)
    flow(p)    = h(p) (q(p) - p) + residual(p)

  so `warp_3d(source_volume, flow)` samples the source at q(p) + residual(p) on the head and at
  p itself (no motion) on the background and the torso, with a smooth blend between. Near the
  face (W >= 1, e.g. at every landmark, whose own weight is 1) the residual is the normalised
  Gaussian average of the nearby landmark residuals; far from the face it fades to 0 with the
  confidence. Written with max(1, W) the two cases are one formula without dividing by a
  vanishing W. Without `source_head` (H_S = 1) every voxel moves rigidly.

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
    source_head: (B, H, W) H_S in [0, 1] at the volume's height and width (e.g. the person
      matte times `head_region` of the source), or None.

  Returns:
    flow (B, D, H, W, 3) float32 normalised (dx, dy, dz); confidence (B, D, H, W, 1) in [0, 1];
    head_flow (B, D, H, W, 3), the same flow as if every voxel were on the head
    (q(p) - p + residual(p)): where the moved head lands, what it shows (flow and head_flow
    agree on the head). No gradient flows through this function (its inputs are data).
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

  sums = _gaussian_sums(driving, values, depth, height, width, sigma)  # (B, D, H, W, 4)
  grid = warp.identity_grid_3d(depth, height, width)  # (D, H, W, 3)
  total_weight = sums[..., 3:]
  residual = sums[..., :3] / jnp.maximum(total_weight, 1.0)
  confidence = jnp.clip(total_weight, 0.0, 1.0)

  rigid = apply_similarity(
    jnp.broadcast_to(grid, (batch, *grid.shape)), scale, rotation, translation
  )
  motion = rigid - grid
  head_flow = motion + residual
  if source_head is None:
    return head_flow, confidence, head_flow
  head = jax.lax.stop_gradient(source_head.astype(jnp.float32))[..., None]  # (B, H, W, 1)
  on_head = warp.sample_2d(head, rigid[..., :2].reshape(batch, -1, width, 2))
  flow = motion * on_head.reshape(batch, depth, height, width, 1) + residual
  return flow, confidence, head_flow


def facing(landmarks: jax.Array) -> jax.Array:
  """(B, N) in [-1, 1]: how squarely the face surface at each landmark faces the camera.

  For each triangle of face_topology.surface_triangles, its area in the image (x, y) over its
  area in 3D (x, y, z) is the cosine between its normal and the view axis, signed by its
  orientation against the canonical frontal face's (negative: turned away, on the far side of
  a profile). Each landmark takes the 3D-area-weighted mean over its triangles. A frontal face
  gives ~1 on the cheeks' front and less towards the edges; the far cheek of a profile gives
  <= 0. Data only (no gradient).
  """
  points = jax.lax.stop_gradient(jnp.asarray(landmarks, jnp.float32))
  triangles = face_topology.surface_triangles(points.shape[1])
  a, b, c = (points[:, triangles[:, i]] for i in range(3))  # (B, T, 3) each
  normal = jnp.cross(b - a, c - a)  # z: twice the signed image area (x right, y down)
  area = jnp.linalg.norm(normal, axis=-1)  # twice the 3D area
  # Counter-clockwise in the canonical image (y down) is a positive z of the cross product.
  image_area = normal[..., 2]
  count = points.shape[1]
  incidence = np.zeros((len(triangles), count), np.float32)
  for i in range(3):
    incidence[np.arange(len(triangles)), triangles[:, i]] = 1.0
  total = jnp.einsum('bt,tn->bn', area, incidence, precision=_HIGHEST)
  signed = jnp.einsum('bt,tn->bn', image_area, incidence, precision=_HIGHEST)
  return jnp.clip(signed / jnp.maximum(total, 1e-12), -1.0, 1.0)


def landmark_field(
  driving_landmarks: jax.Array,
  values: jax.Array,
  *,
  depth: int,
  height: int,
  width: int,
  sigma: float,
) -> tuple[jax.Array, jax.Array]:
  """(field (B, D, H, W, C), confidence (B, D, H, W, 1)): per-landmark `values` (B, N, C)
  spread over the volume as initial_flow spreads the residuals (sum_k w_k v_k / max(1, W), with
  w_k the Gaussian around driving landmark k, and min(1, W)): the landmarks' values near the
  face, fading to 0 away from it."""
  driving = jax.lax.stop_gradient(jnp.asarray(driving_landmarks, jnp.float32))
  values = jax.lax.stop_gradient(jnp.asarray(values, jnp.float32))
  ones = jnp.ones_like(values[..., :1])
  sums = _gaussian_sums(driving, jnp.concatenate([values, ones], -1), depth, height, width, sigma)
  return sums[..., :-1] / jnp.maximum(sums[..., -1:], 1.0), jnp.clip(sums[..., -1:], 0.0, 1.0)


def _gaussian_sums(driving, values, depth: int, height: int, width: int, sigma) -> jax.Array:
  """(B, D, H, W, C): sum over the landmarks of the Gaussian around each driving landmark
  (B, N, 3) at every voxel centre times its `values` (B, N, C) (separable; see initial_flow)."""
  grid = warp.identity_grid_3d(depth, height, width)  # (D, H, W, 3)
  xs, ys, zs = grid[0, 0, :, 0], grid[0, :, 0, 1], grid[:, 0, 0, 2]
  gx = _gaussian_1d(driving[..., 0], xs, sigma)  # (B, W, N)
  gy = _gaussian_1d(driving[..., 1], ys, sigma)  # (B, H, N)
  gz = _gaussian_1d(driving[..., 2], zs, sigma)  # (B, D, N)
  table = gz[:, :, None, :, None] * gx[:, None, :, :, None] * values[:, None, None]
  return jnp.einsum('bhn,bdwnc->bdhwc', gy, table, precision=_HIGHEST)


def eye_zone(landmarks: jax.Array, reach: float, height: int, width: int) -> jax.Array:
  """(B, height, width, 1) near_landmarks of the eyes' landmarks (lids and irises) within `reach`
  eye widths (the mean distance between each eye's corners), of (B, N, 2+) landmarks (the
  irises only when N is 478)."""
  points = jax.lax.stop_gradient(jnp.asarray(landmarks, jnp.float32)[..., :2])
  corners = np.asarray(face_topology.EYE_CORNERS)  # (2 eyes, outer/inner)
  eye_width = jnp.linalg.norm(points[:, corners[:, 0]] - points[:, corners[:, 1]], axis=-1)
  eyes = face_topology.EYE_POINTS[face_topology.EYE_POINTS < points.shape[1]]
  return near_landmarks(points[:, eyes], reach * eye_width.mean(-1), height, width)


def near_landmarks(points: jax.Array, radius: jax.Array, height: int, width: int) -> jax.Array:
  """(B, height, width, 1): min(1, the sum over `points` (B, P, 2) of Gaussians of radius
  `radius` (B,)), normalised units: 1 on and between close landmarks, fading away from them."""
  grid = warp.identity_grid_2d(height, width)
  sigma = radius[:, None, None]
  gx = _gaussian_1d(points[..., 0], grid[0, :, 0], sigma)  # (B, W, P)
  gy = _gaussian_1d(points[..., 1], grid[:, 0, 1], sigma)  # (B, H, P)
  return jnp.clip(jnp.einsum('bhp,bwp->bhw', gy, gx, precision=_HIGHEST), 0.0, 1.0)[..., None]


def mesh_flow(
  source_landmarks: jax.Array,
  driving_landmarks: jax.Array,
  triangles: np.ndarray,
  *,
  height: int,
  width: int,
) -> tuple[jax.Array, jax.Array]:
  """The piecewise-affine backward flow of a landmark mesh, at the image's pixels.

  Each pixel inside a driving-space triangle shows the source point with the same barycentric
  coordinates in the source's triangle. Where a triangle collapses or folds over (a closed eye's
  opening), it shows nothing, and the triangles around it cover the pixels: a lid closes over
  the eye, which a smooth interpolation of the landmarks' motions cannot do (it averages the
  lid's motion with the motionless lower lid across the gap).

  Args:
    source_landmarks, driving_landmarks: (B, N, 2+) normalised landmarks (x, y used).
    triangles: (K, 3) landmark indices, counter-clockwise in the canonical face (as
      face_topology.eye_triangles gives them).
    height, width: the image size.

  Returns:
    flow (B, height, width, 2) normalised backward flow (0 outside the mesh) and coverage
    (B, height, width, 1) in {0, 1}. Data only: no gradient flows through it.
  """
  source = jax.lax.stop_gradient(jnp.asarray(source_landmarks, jnp.float32)[..., :2])
  driving = jax.lax.stop_gradient(jnp.asarray(driving_landmarks, jnp.float32)[..., :2])
  triangles = jnp.asarray(triangles, jnp.int32)
  grid = warp.identity_grid_2d(height, width)  # (H, W, 2)
  batch = source.shape[0]
  to = driving[:, triangles]  # (B, K, 3, 2)
  come_from = source[:, triangles]
  edge1 = to[:, :, 1] - to[:, :, 0]
  edge2 = to[:, :, 2] - to[:, :, 0]
  area = edge1[..., 0] * edge2[..., 1] - edge1[..., 1] * edge2[..., 0]  # (B, K), > 0 if unfolded
  # A triangle thinner than this (normalised area) has collapsed: it covers no pixel.
  usable = area > 1e-7
  inverse_area = jnp.where(usable, 1.0 / jnp.where(usable, area, 1.0), 0.0)

  def claim(k, best):
    score, position = best
    offset = grid[None] - to[:, k, None, None, 0]  # (B, H, W, 2)
    e1, e2 = edge1[:, k, None, None], edge2[:, k, None, None]
    inv = inverse_area[:, k, None, None]
    l1 = (offset[..., 0] * e2[..., 1] - offset[..., 1] * e2[..., 0]) * inv
    l2 = (e1[..., 0] * offset[..., 1] - e1[..., 1] * offset[..., 0]) * inv
    l0 = 1.0 - l1 - l2
    inside = jnp.minimum(jnp.minimum(l0, l1), l2)
    inside = jnp.where(usable[:, k, None, None], inside, -jnp.inf)
    corners = come_from[:, k, None, None]  # (B, 1, 1, 3, 2)
    here = l0[..., None] * corners[..., 0, :] + l1[..., None] * corners[..., 1, :]
    here = here + l2[..., None] * corners[..., 2, :]
    better = inside > score
    return jnp.where(better, inside, score), jnp.where(better[..., None], here, position)

  start = (
    jnp.full((batch, height, width), -jnp.inf, jnp.float32),
    jnp.zeros((batch, height, width, 2), jnp.float32),
  )
  score, position = jax.lax.fori_loop(0, triangles.shape[0], claim, start)
  # A pixel centre on a shared edge is inside both neighbours (score 0); the tolerance only
  # absorbs rounding there.
  coverage = (score >= -1e-4).astype(jnp.float32)[..., None]
  return (position - grid) * coverage, coverage


def rigid_flow_2d(
  source_landmarks: jax.Array,
  driving_landmarks: jax.Array,
  stable_indices: Sequence[int] | np.ndarray | jax.Array,
  depth: jax.Array,
  height: int,
  width: int,
) -> jax.Array:
  """The head's rigid backward image flow (B, height, width, 2): each driving pixel, taken at
  depth z = `depth` (B,) (normalised), shows the source point the rigid head motion (the
  similarity of the stable landmarks, driving -> source, as in initial_flow) brings it from.

  What moves with the skull alone (the upper teeth) moves so. Data only: no gradient.
  """
  source = jax.lax.stop_gradient(jnp.asarray(source_landmarks, jnp.float32))
  driving = jax.lax.stop_gradient(jnp.asarray(driving_landmarks, jnp.float32))
  stable = jnp.asarray(stable_indices, jnp.int32)
  similarity = similarity_transform(driving[:, stable], source[:, stable])
  grid = warp.identity_grid_2d(height, width)  # (H, W, 2)
  batch = source.shape[0]
  z = jnp.broadcast_to(
    jax.lax.stop_gradient(depth).astype(jnp.float32)[:, None, None, None], (batch, height, width, 1)
  )
  points = jnp.concatenate([jnp.broadcast_to(grid, (batch, height, width, 2)), z], axis=-1)
  return apply_similarity(points, *similarity)[..., :2] - grid


def project_flow(
  flow: jax.Array, visibility_logits: jax.Array, height: int, width: int
) -> jax.Array:
  """The 2D image flow a 3D flow shows: per pixel, the depth slices' (dx, dy) weighted by their
  visibility, upsampled to the image.

  Args:
    flow: (B, D, h, w, 3) backward 3D flow, normalised units.
    visibility_logits: (B, D, h, w, 1); softmax over D gives each slice's weight (the slice the
      pixel shows gets most of it).
    height, width: the image size.

  Returns:
    (B, height, width, 2) float32 backward 2D flow (dx, dy), normalised units: the image at
    pixel p shows the source at p + flow(p).
  """
  weights = jax.nn.softmax(visibility_logits.astype(jnp.float32), axis=1)
  planar = jnp.sum(weights * flow[..., :2].astype(jnp.float32), axis=1)  # (B, h, w, 2)
  if planar.shape[1:3] == (height, width):
    return planar
  return jax.image.resize(planar, (planar.shape[0], height, width, 2), 'linear')


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
  'head_region',
  'polygon_mask',
  'project_flow',
  'head_pose',
  'rotation_to_euler',
  'euler_to_rotation',
]
