"""Training augmentation: the same random flip, scale, shift and colour change for both frames of
a pair, and `repose`, which turns one still portrait into a source/driving pseudo-pair with known
motion.

Frames are dicts of 'image' (H, W, 3) float32 in [0, 1], 'landmarks' (N, 3) float32 normalised
(reenact_jax/geometry.py) and 'mask' (H, W, 1) float32 {0, 1}. Numpy and OpenCV only: this runs
in data-loading threads, never under jit.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence

import cv2
import jax
import ml_collections
import numpy as np

from reenact_jax import crops, face_topology, geometry, media, occlusion


@dataclasses.dataclass(frozen=True)
class Augmentation:
  flip: bool
  color_jitter: float
  scale_jitter: float
  translate_jitter: float
  # The probability that a source gets a synthetic occluder (a hand or an object) on its face.
  source_occluders: float = 0.0

  @classmethod
  def from_config(cls, data_config: ml_collections.ConfigDict) -> 'Augmentation':
    return cls(
      flip=bool(data_config.flip),
      color_jitter=float(data_config.color_jitter),
      scale_jitter=float(data_config.scale_jitter),
      translate_jitter=float(data_config.translate_jitter),
      source_occluders=float(data_config.source_occluders),
    )


def flip_frame(frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Mirror image, mask, matte and landmarks; landmark indices are remapped (left eye stays
  left eye)."""
  landmarks = frame['landmarks'][face_topology.FLIP_PERMUTATION].copy()
  landmarks[:, 0] = -landmarks[:, 0]
  return {
    'image': frame['image'][:, ::-1],
    'mask': frame['mask'][:, ::-1],
    'matte': frame['matte'][:, ::-1],
    'landmarks': landmarks,
  }


def affine_frame(
  frame: dict[str, np.ndarray], scale: float, translate: tuple[float, float]
) -> dict[str, np.ndarray]:
  """p -> scale * p + translate in normalised coordinates, applied to image, mask, matte and
  landmarks.

  z is scaled with x and y so the landmarks stay a similarity transform of the original face.
  """
  height, width = frame['image'].shape[:2]
  # In pixels (continuous coordinates, 0 at the image edge): u' = s u + (1 - s + t) * W / 2.
  matrix = np.array(
    [
      [scale, 0.0, (1.0 - scale + translate[0]) * width / 2.0],
      [0.0, scale, (1.0 - scale + translate[1]) * height / 2.0],
    ],
    np.float32,
  )
  # cv2 maps pixel centres (integer coordinates); shift by half a pixel on both sides.
  half = np.array([[0.5], [0.5]], np.float32)
  matrix_cv = matrix.copy()
  matrix_cv[:, 2:] = matrix[:, 2:] + matrix[:, :2] @ half - half
  warp = lambda plane, interpolation, border: cv2.warpAffine(
    plane, matrix_cv, (width, height), flags=interpolation, borderMode=border
  )
  image = warp(frame['image'], cv2.INTER_LINEAR, cv2.BORDER_REFLECT)
  mask = warp(frame['mask'][..., 0], cv2.INTER_NEAREST, cv2.BORDER_CONSTANT)[..., None]
  matte = warp(frame['matte'][..., 0], cv2.INTER_LINEAR, cv2.BORDER_REFLECT)[..., None]
  landmarks = frame['landmarks'] * scale
  landmarks[:, 0] += translate[0]
  landmarks[:, 1] += translate[1]
  return {'image': image, 'mask': mask, 'matte': matte, 'landmarks': landmarks.astype(np.float32)}


def color_jitter(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
  """Brightness, contrast and saturation scaled by factors in [1 - amount, 1 + amount].

  The readable definition; augment_pair applies the same map as one fused colour matrix.
  """
  brightness, contrast, saturation = rng.uniform(1.0 - amount, 1.0 + amount, size=3)
  image = np.asarray(image, np.float32) * np.float32(brightness)
  mean = image.mean()
  image = (image - mean) * np.float32(contrast) + mean
  grey = image.mean(axis=-1, keepdims=True)
  image = (image - grey) * np.float32(saturation) + grey
  return np.clip(image, 0.0, 1.0)


def _color_matrix(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """The (3, 4) affine colour map equal to color_jitter's three steps on `image`.

  Brightness b then contrast c about the image mean m is x -> a x + d with a = c b and
  d = (1 - c) b m; saturation s about the per-pixel grey g(x) = mean_k x_k then gives
  x -> a s x + a (1 - s) g(x) + d: one matrix a (s I + (1 - s) / 3) plus the offset d.
  """
  brightness, contrast, saturation = (float(f) for f in factors)
  mean = float(np.mean(cv2.mean(image)[:3]))
  gain = contrast * brightness
  matrix = np.full((3, 4), gain * (1.0 - saturation) / 3.0)
  matrix[np.arange(3), np.arange(3)] += gain * saturation
  matrix[:, 3] = (1.0 - contrast) * brightness * mean
  return matrix.astype(np.float32)


def _apply_color(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """(H, W, 3) float32 -> colour-jittered copy in [0, 1] (one cv2 pass plus an in-place clip)."""
  out = cv2.transform(image, _color_matrix(image, factors))
  return np.clip(out, 0.0, 1.0, out=out)


def _geometry_matrix(flip: bool, scale: float, translate, height: int, width: int) -> np.ndarray:
  """(2, 3) cv2 warpAffine matrix (pixel-index units) of p -> scale * F p + translate.

  p in normalised coordinates, F mirrors x when `flip`. In continuous pixels (0 at the image
  edge) u' = s f u + (1 - s f + t) * W / 2 with f = -1 for a flip; cv2 maps pixel centres
  (integer coordinates), so shift by half a pixel on both sides.
  """
  sx = -scale if flip else scale
  matrix = np.array(
    [
      [sx, 0.0, (1.0 - sx + translate[0]) * width / 2.0],
      [0.0, scale, (1.0 - scale + translate[1]) * height / 2.0],
    ]
  )
  matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
  return matrix.astype(np.float32)


def _transform_frame(
  frame: dict[str, np.ndarray], flip: bool, scale: float, translate, warp: bool
) -> dict[str, np.ndarray]:
  """flip_frame then affine_frame in one resampling of the image, the mask and the matte."""
  landmarks = np.asarray(frame['landmarks'], np.float32)
  image, mask, matte = frame['image'], frame['mask'], frame['matte']
  if flip:
    landmarks = landmarks[face_topology.FLIP_PERMUTATION]
    landmarks[:, 0] = -landmarks[:, 0]
  if warp:
    height, width = image.shape[:2]
    matrix = _geometry_matrix(flip, scale, translate, height, width)
    image = cv2.warpAffine(
      image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    mask = cv2.warpAffine(
      mask[..., 0], matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    )[..., None]
    matte = cv2.warpAffine(
      matte[..., 0], matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )[..., None]
    landmarks = landmarks * np.float32(scale)
    landmarks[:, :2] += np.asarray(translate, np.float32)
  elif flip:
    image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
    matte = np.ascontiguousarray(matte[:, ::-1])
  out = {'image': image, 'mask': mask, 'matte': matte, 'landmarks': landmarks}
  if 'flow' in frame:
    out['flow'] = _transform_flow(frame['flow'], flip, scale, translate, warp)
  return out


def _transform_flow(flow: np.ndarray, flip: bool, scale: float, translate, warp: bool):
  """A backward flow (H, W, 2) of a pair moved by the pair's common map T(p) = s F p + t.

  A driving pixel q was T^-1(q), which showed the source at T^-1(q) + f(T^-1(q)); in the moved
  source that is q + s F f(T^-1(q)): the field is resampled like the image and its vectors
  scaled (and mirrored in x by a flip); the translation cancels.
  """
  flow = np.asarray(flow, np.float32)
  if warp:
    height, width = flow.shape[:2]
    matrix = _geometry_matrix(flip, scale, translate, height, width)
    flow = cv2.warpAffine(
      flow, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
  elif flip:
    flow = flow[:, ::-1]
  factors = np.array([-scale if flip else scale, scale], np.float32)
  return np.ascontiguousarray(flow * factors)


def augment_pair(
  source: dict[str, np.ndarray],
  driving: dict[str, np.ndarray],
  rng: np.random.Generator,
  augmentation: Augmentation,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The same flip, geometric and colour jitter for both frames (it adds no relative motion).

  Equal (up to interpolation rounding) to flip_frame, then affine_frame, then color_jitter with
  the same random draws, but each frame is resampled once (flip, scale and shift folded into
  one warpAffine) and jittered by one fused colour matrix, all in float32.
  """
  source, driving, _ = augment_views(source, driving, (), rng, augmentation)
  return source, driving


def augment_views(
  source: dict[str, np.ndarray],
  driving: dict[str, np.ndarray],
  extra_sources: Sequence[dict[str, np.ndarray]],
  rng: np.random.Generator,
  augmentation: Augmentation,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
  """augment_pair with more source views of the pair: every frame gets the same flip,
  geometric and colour jitter, with the same random draws as augment_pair; the synthetic
  occluder goes on the primary source only."""
  flip = bool(augmentation.flip and rng.random() < 0.5)
  warp = bool(augmentation.scale_jitter or augmentation.translate_jitter)
  scale, translate = 1.0, (0.0, 0.0)
  if warp:
    scale = 1.0 + rng.uniform(-augmentation.scale_jitter, augmentation.scale_jitter)
    translate = tuple(
      rng.uniform(-augmentation.translate_jitter, augmentation.translate_jitter, size=2) * 2.0
    )
  source, driving, *extras = (
    _transform_frame(frame, flip, scale, translate, warp)
    for frame in (source, driving, *extra_sources)
  )
  if augmentation.color_jitter:
    amount = augmentation.color_jitter
    # Same factors for every frame; each is jittered about its own mean.
    factors = rng.uniform(1.0 - amount, 1.0 + amount, size=3)
    for frame in (source, driving, *extras):
      frame['image'] = _apply_color(np.asarray(frame['image'], np.float32), factors)
  # Drawn last, and only when on: the other draws, and so the data, stay as they were without it.
  if augmentation.source_occluders and rng.random() < augmentation.source_occluders:
    source = occluded_frame(source, rng)
  return source, driving, extras


def occluded_frame(frame: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
  """The frame with a synthetic occluder on its face (occlusion.paste_occluder, placed by its
  landmarks) and its coverage as 'occluder' (H, W, 1) float32: what the model must not copy into
  the output (the driving frame does not show it)."""
  image = np.asarray(frame['image'], np.float32)
  height, width = image.shape[:2]
  points = np.asarray(frame['landmarks'], np.float32)
  pixels = np.stack([(points[:, 0] + 1) * (width / 2), (points[:, 1] + 1) * (height / 2)], -1)
  pasted, coverage, _ = occlusion.paste_occluder(media.to_uint8(image), pixels, rng)
  cover = coverage[..., None]
  # paste_occluder has blended its edge; the pixels it does not cover stay exactly as they were.
  image = np.where(cover > 0, pasted.astype(np.float32) * (1.0 / 255.0), image)
  return {**frame, 'image': image.astype(np.float32), 'occluder': cover.astype(np.float32)}


def _rbf_displacement(points: np.ndarray, centres: np.ndarray, vectors: np.ndarray, sigma):
  """(..., 2) Gaussian RBF field sum_k v_k exp(-|p - c_k|^2 / (2 sigma^2)) at points (..., 2)."""
  squared = ((points[..., None, :] - centres) ** 2).sum(axis=-1)
  return np.exp(squared * (-0.5 / sigma**2)) @ vectors


@functools.cache
def _head_region_fn(size: int):
  return jax.jit(lambda landmarks: geometry.head_region(landmarks[None], size, size)[0])


def head_weight(landmarks: np.ndarray, matte: np.ndarray) -> np.ndarray:
  """(H, W) float32: the person matte (H, W, 1) times the head region of the landmarks (N, 3)."""
  height, width = matte.shape[:2]
  if height != width:
    raise ValueError(f'head_weight needs a square frame, got {matte.shape[:2]}.')
  region = np.asarray(_head_region_fn(height)(np.asarray(landmarks, np.float32)))
  return matte[..., 0] * region


def repose(
  image: np.ndarray,
  landmarks: np.ndarray,
  matte: np.ndarray,
  *,
  rng: np.random.Generator,
  max_rotation_deg: float,
  max_scale: float,
  max_translation: float,
  max_deformation: float = 0.03,
  with_flow: bool = False,
) -> tuple[np.ndarray, ...]:
  """Random smooth re-posing of the head in a still portrait (a pseudo driving frame).

  The head (person matte times geometry.head_region: face, hair, ears) moves; the torso and the
  background stay, as the model's geometric prior assumes. The head layer samples the input at
  p = v - d(v) with v = A^-1(q): A is a similarity about the face centre (in-plane rotation,
  scale, translation) and d a smooth Gaussian-RBF displacement made of a few bumps centred on
  random landmarks. It is composited by its moved head weight over the background layer: the
  input with its head region filled from the surrounding background (cv2.inpaint), which is what
  a moved head uncovers. The landmarks go through the exact inverse of the head's sampling map
  (fixed-point iteration), so image and landmarks stay consistent to sub-pixel accuracy. z is
  scaled with the similarity (an in-plane rotation leaves it unchanged) and re-centred.

  Args:
    image: (H, W, 3) float32 in [0, 1], square.
    landmarks: (N, 3) normalised landmarks of `image` (MediaPipe topology).
    matte: (H, W, 1) float32 person matte in [0, 1].
    rng: source of randomness (the result is a deterministic function of its state).
    max_rotation_deg: largest in-plane rotation, degrees.
    max_scale: largest relative scale change (0.1: scale in [0.9, 1.1]).
    max_translation: largest shift per axis, normalised units (1 = half the image).
    max_deformation: largest displacement of one non-rigid bump, as a fraction of the face
      oval's diagonal; at most 0.05, which keeps the map invertible.

  Returns:
    (image (H, W, 3) float32, landmarks (N, 3) float32, mask (H, W, 1) float32 face-oval fill
    of the new landmarks, matte (H, W, 1) float32 of the moved person); with_flow adds the
    head's true backward flow (H, W, 2) float32, normalised (dx, dy): the output pixel q shows
    the input at q + flow(q), meaningful where the moved head is.
  """
  image = np.asarray(image, np.float32)
  landmarks = np.asarray(landmarks, np.float64)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image must have shape (H, W, 3), got {image.shape}.')
  if landmarks.ndim != 2 or landmarks.shape[-1] != 3:
    raise ValueError(f'landmarks must have shape (N, 3), got {landmarks.shape}.')
  if not 0.0 <= max_deformation <= 0.05:
    raise ValueError(
      f'max_deformation must be in [0, 0.05] (fraction of the face size), got {max_deformation}.'
    )
  height, width = image.shape[:2]

  # Similarity A(v) = s R (v - c) + c + t about the face centre c.
  oval = landmarks[face_topology.FACE_OVAL, :2]
  centre = oval.mean(axis=0)
  face_size = float(np.linalg.norm(oval.max(axis=0) - oval.min(axis=0)))
  angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
  scale = 1.0 + rng.uniform(-max_scale, max_scale)
  translation = rng.uniform(-max_translation, max_translation, size=2)
  rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

  # Non-rigid part: a few bumps at random landmarks. Each bump's gradient is at most
  # amplitude / sigma * exp(-1/2) <= 0.15, so with 4 bumps |grad d| <= 0.61 < 1: the map is a
  # diffeomorphism and the fixed-point inversion below converges.
  num_bumps = 4
  sigma = 0.2 * face_size
  centres = landmarks[rng.choice(len(landmarks), num_bumps, replace=False), :2]
  directions = rng.normal(size=(num_bumps, 2))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  vectors = directions * rng.uniform(0.0, max_deformation * face_size, size=(num_bumps, 1))

  # The head layer: backward map from output pixel centres to input pixel coordinates.
  xs = (np.arange(width) + 0.5) * (2.0 / width) - 1.0
  ys = (np.arange(height) + 0.5) * (2.0 / height) - 1.0
  grid = np.stack(np.meshgrid(xs, ys), axis=-1)  # (H, W, 2) normalised (x, y).
  v = (grid - centre - translation) @ rotation / scale + centre  # A^-1: R^-1 = R^T.
  p = v - _rbf_displacement(v, centres, vectors, sigma)
  map_x = ((p[..., 0] + 1.0) * (0.5 * width) - 0.5).astype(np.float32)
  map_y = ((p[..., 1] + 1.0) * (0.5 * height) - 0.5).astype(np.float32)
  remap = lambda array, border: cv2.remap(
    array, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=border
  )
  head = head_weight(landmarks, matte)
  moved_head = remap(head, cv2.BORDER_CONSTANT)[..., None]
  head_layer = remap(image, cv2.BORDER_REFLECT_101)

  # The background layer: the input with its head (grown by a few pixels) filled in.
  radius = max(1, round(0.02 * height))
  hole = cv2.dilate((head > 0.1).astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8))
  filled = cv2.inpaint(
    np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), hole, radius * 2, cv2.INPAINT_TELEA
  ).astype(np.float32) * np.float32(1 / 255)
  background = np.where(hole[..., None] > 0, filled, image)
  moved_image = moved_head * head_layer + (1.0 - moved_head) * background
  torso = matte * (1.0 - hole[..., None])
  moved_matte = np.maximum(moved_head, torso)

  # Landmarks: solve v - d(v) = p for v (contraction), then apply A.
  source = landmarks[:, :2]
  v = source.copy()
  for _ in range(50):
    v = source + _rbf_displacement(v, centres, vectors, sigma)
  moved_xy = scale * (v - centre) @ rotation.T + centre + translation
  moved_z = scale * landmarks[:, 2]
  moved_landmarks = np.concatenate([moved_xy, (moved_z - moved_z.mean())[:, None]], axis=1)
  moved_landmarks = moved_landmarks.astype(np.float32)
  mask = crops.face_oval_mask(moved_landmarks, height, width)
  result = (
    np.clip(moved_image, 0.0, 1.0),
    moved_landmarks,
    mask,
    np.clip(moved_matte, 0.0, 1.0).astype(np.float32),
  )
  if with_flow:
    result += ((p - grid).astype(np.float32),)
  return result
