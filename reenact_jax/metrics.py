"""Evaluation measurements as pure functions: image error, landmarks, head pose.

Images are float in [0, 1], (B, H, W, 3); every image measure returns one value per image, (B,),
so the caller averages over frames. Landmarks are (B, N, 3); `akd` takes them in pixels, the
pose and expression measures in the project's normalised convention (x, y in [-1, 1] over the
frame, z on the scale of x).
"""

import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from reenact_jax import geometry

# PSNR of a perfect reconstruction is infinite; the mean squared error is floored here so that a
# mean over frames stays finite (the floor gives 100 dB for images in [0, 1]).
MIN_MSE = 1e-10


def l1(prediction, target) -> jnp.ndarray:
  """Mean absolute error per image, (B,), in intensity units of [0, 1]."""
  return jnp.mean(jnp.abs(prediction - target), axis=(1, 2, 3))


def psnr(prediction, target) -> jnp.ndarray:
  """Peak signal-to-noise ratio per image, (B,), dB, peak 1.0; capped at 100 dB (MIN_MSE)."""
  mse = jnp.mean(jnp.square(prediction - target), axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, MIN_MSE))


def ssim(prediction, target) -> jnp.ndarray:
  """Structural similarity per image, (B,), Gaussian window 11 px, sigma 1.5 (dm-pix)."""
  return dm_pix.ssim(prediction, target, max_val=1.0)


def akd(prediction_landmarks: np.ndarray, target_landmarks: np.ndarray) -> np.ndarray:
  """Average keypoint distance per image, (B,): mean 2D (x, y) distance over the N landmarks.

  Args:
    prediction_landmarks, target_landmarks: (B, N, 2 or 3) in pixels of the same frame size
      (only x and y are used: z of a monocular mesh is not observed).
  """
  difference = np.asarray(prediction_landmarks)[..., :2] - np.asarray(target_landmarks)[..., :2]
  return np.linalg.norm(difference, axis=-1).mean(axis=-1)


def head_pose_angles(
  landmarks: np.ndarray, canonical: np.ndarray, stable_indices: np.ndarray
) -> np.ndarray:
  """(B, N, 3) normalised landmarks -> (B, 3) yaw, pitch, roll in degrees.

  geometry.head_pose (the similarity mapping the canonical face's stable landmarks, which move
  rigidly with the skull, onto the frame's) decomposed by geometry.rotation_to_euler.
  """
  _, rotation, _ = geometry.head_pose(
    jnp.asarray(landmarks, jnp.float32), jnp.asarray(canonical, jnp.float32), stable_indices
  )
  return np.asarray(geometry.rotation_to_euler(rotation), np.float64)


def most_different_poses(poses: np.ndarray, first: int, count: int) -> list[int]:
  """`count` indices of (F, 3) head poses (degrees) besides `first`, chosen greedily: each the
  pose farthest (Euclidean over yaw, pitch, roll) from the ones already chosen, so that views of
  a face show it from the most different sides."""
  chosen = [int(first)]
  for _ in range(min(count, len(poses) - 1)):
    distance = np.min(np.linalg.norm(poses[:, None] - poses[None, chosen], axis=-1), axis=1)
    distance[chosen] = -1.0
    chosen.append(int(np.argmax(distance)))
  return chosen[1:]


def pose_error(
  prediction: np.ndarray, target: np.ndarray, canonical: np.ndarray, stable_indices: np.ndarray
) -> np.ndarray:
  """Absolute yaw, pitch, roll differences per image, (B, 3), degrees.

  Args:
    prediction, target: (B, N, 3) normalised landmarks found on the output and driving frames.
  """
  difference = head_pose_angles(prediction, canonical, stable_indices) - head_pose_angles(
    target, canonical, stable_indices
  )
  # Angles wrap around at ±180°.
  return np.abs((difference + 180.0) % 360.0 - 180.0)


def expression_error(
  prediction: np.ndarray, target: np.ndarray, stable_indices: np.ndarray
) -> np.ndarray:
  """Landmark distance once head pose is removed, per image, (B,), normalised units.

  The prediction is mapped onto the target by the similarity fitted on the stable landmarks
  (which move only with the head), so what remains is the non-rigid part (mouth, eyes, brows);
  the value is the mean 3D distance over all N landmarks after that alignment.

  Args:
    prediction, target: (B, N, 3) normalised landmarks.
  """
  target = jnp.asarray(target, jnp.float32)
  aligned = pose_aligned(prediction, target, stable_indices)
  return np.asarray(jnp.linalg.norm(aligned - target, axis=-1).mean(axis=-1), np.float64)


def pose_aligned(prediction: np.ndarray, target: np.ndarray, stable_indices) -> jax.Array:
  """The (B, N, 3) `prediction` mapped onto `target` by the similarity fitted on the stable
  landmarks (which move only with the head): what differs after it is expression, not pose."""
  prediction = jnp.asarray(prediction, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  stable = np.asarray(stable_indices).reshape(-1)
  similarity = geometry.similarity_transform(prediction[:, stable], target[:, stable])
  return geometry.apply_similarity(prediction, *similarity)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """1 - cos(angle) between (B, D) descriptors, (B,), in [0, 2]."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return 1.0 - (a * b).sum(axis=-1) / np.maximum(norms, 1e-12)


# Inner-lip midpoints, eyelid midpoints and eye corners of the MediaPipe topology.
_UPPER_LIP, _LOWER_LIP = 13, 14
_RIGHT_EYE_LIDS, _LEFT_EYE_LIDS = (159, 145), (386, 374)
_RIGHT_EYE_CORNERS, _LEFT_EYE_CORNERS = (33, 133), (362, 263)
_OUTER_EYE_CORNERS = (33, 263)
_RIGHT_IRIS_CENTRE, _LEFT_IRIS_CENTRE = 468, 473
# What the motion report compares between the driving clip and the output.
MOTION_MEASURES = ('mouth_opening', 'eye_opening', 'gaze_x', 'gaze_y', 'yaw', 'pitch', 'roll')


def face_measures(
  landmarks: np.ndarray, canonical: np.ndarray, stable_indices: np.ndarray
) -> dict[str, np.ndarray]:
  """Per-frame expression and pose measures of (F, N, 3) normalised landmarks, each (F,).

  mouth_opening: inner-lip gap / outer eye-corner distance; eye_opening: mean over both eyes of
  the eyelid gap / the eye's width; gaze_x, gaze_y: mean over both eyes of the iris centre's
  offset from the midpoint of the eye's corners, along the corners' line (towards the image's
  right) and across it (down), over the eye's width; yaw, pitch, roll: degrees
  (head_pose_angles). Ratios to the face's own size, so they do not change with the face's scale
  in the frame. Needs the 478-point topology (irises).
  """
  points = np.asarray(landmarks, np.float64)[..., :2]
  distance = lambda a, b: np.linalg.norm(points[:, a] - points[:, b], axis=-1)
  face_width = np.maximum(distance(*_OUTER_EYE_CORNERS), 1e-6)
  eyes = [
    distance(*lids) / np.maximum(distance(*corners), 1e-6)
    for lids, corners in (
      (_RIGHT_EYE_LIDS, _RIGHT_EYE_CORNERS),
      (_LEFT_EYE_LIDS, _LEFT_EYE_CORNERS),
    )
  ]
  gaze = []
  for iris, (first, second) in (
    (_RIGHT_IRIS_CENTRE, _RIGHT_EYE_CORNERS),
    (_LEFT_IRIS_CENTRE, _LEFT_EYE_CORNERS),
  ):
    axis = points[:, second] - points[:, first]
    width = np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-6)
    along = axis / width
    across = np.stack([-along[:, 1], along[:, 0]], -1)  # along turned by +90 degrees (y down)
    offset = (points[:, iris] - 0.5 * (points[:, first] + points[:, second])) / width
    gaze.append(np.stack([(offset * along).sum(-1), (offset * across).sum(-1)], -1))
  gaze = (gaze[0] + gaze[1]) / 2
  angles = head_pose_angles(landmarks, canonical, stable_indices)
  return {
    'mouth_opening': distance(_UPPER_LIP, _LOWER_LIP) / face_width,
    'eye_opening': (eyes[0] + eyes[1]) / 2,
    'gaze_x': gaze[:, 0],
    'gaze_y': gaze[:, 1],
    'yaw': angles[:, 0],
    'pitch': angles[:, 1],
    'roll': angles[:, 2],
  }


def gaze_error(wanted: dict[str, np.ndarray], found: dict[str, np.ndarray]) -> float:
  """How far an output's gaze moves from where the driving clip's moves: the mean over frames of
  the distance between the two (gaze_x, gaze_y) series of face_measures (iris offsets in eye
  widths), each taken about its own mean (a person's resting gaze is their own; what must
  follow is its motion). 0 when the output's eyes move exactly as the driver's; the driver's own
  spread when they never move. NaN for fewer than 2 frames."""
  series = [np.stack([m['gaze_x'], m['gaze_y']], -1).astype(np.float64) for m in (wanted, found)]
  if len(series[0]) < 2:
    return math.nan
  wanted_motion, found_motion = (x - x.mean(0) for x in series)
  return float(np.linalg.norm(found_motion - wanted_motion, axis=-1).mean())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation of two (F,) series; NaN when either is constant or F < 3."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
    return math.nan
  return float(np.corrcoef(a, b)[0, 1])


def compare_correlations(
  wanted: np.ndarray, first: np.ndarray, second: np.ndarray, *, samples: int = 2000, seed: int = 0
) -> dict[str, float | None]:
  """How much better `first` follows `wanted` than `second` does: Pearson r(wanted, first) -
  r(wanted, second) over the same frames, with a 95% paired bootstrap interval (frames drawn
  with replacement, the same draw for both). The difference is significant where the interval
  excludes 0.

  Returns {'difference', 'low', 'high'} (None when a correlation is undefined).
  """
  wanted, first, second = (np.asarray(x, np.float64) for x in (wanted, first, second))
  difference = pearson(wanted, first) - pearson(wanted, second)
  if math.isnan(difference):
    return {'difference': None, 'low': None, 'high': None}
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(samples):
    index = rng.integers(0, len(wanted), len(wanted))
    draws.append(pearson(wanted[index], first[index]) - pearson(wanted[index], second[index]))
  low, high = np.nanpercentile(draws, [2.5, 97.5])
  return {'difference': difference, 'low': float(low), 'high': float(high)}
