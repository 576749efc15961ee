"""Driving motion for reenactment: relative motion, the reference frame, and the similarity fits
it needs. Landmarks are (..., N, 3) normalised (reenact_jax/geometry.py); numpy in and out.
"""

import functools

import jax
import numpy as np

from reenact_jax import face_topology, geometry


@functools.cache
def _similarity_fn():
  """geometry.similarity_transform compiled once per shape (eagerly, each of its ops would)."""
  return jax.jit(geometry.similarity_transform)


@functools.cache
def _apply_fn():
  return jax.jit(geometry.apply_similarity)


def similarity(src: np.ndarray, dst: np.ndarray, indices=None):
  """(scale (B,), rotation (B, 3, 3), translation (B, 3)) with dst ~ s src @ R.T + t, fitted on
  `indices` (all points when None). src, dst: (B, N, 3), broadcastable over B."""
  batch = max(len(src), len(dst))
  src = np.broadcast_to(src, (batch, *src.shape[1:]))
  dst = np.broadcast_to(dst, (batch, *dst.shape[1:]))
  if indices is not None:
    src, dst = src[:, indices], dst[:, indices]
  return tuple(
    np.asarray(x)
    for x in _similarity_fn()(np.asarray(src, np.float32), np.asarray(dst, np.float32))
  )


def apply(points: np.ndarray, scale, rotation, translation) -> np.ndarray:
  """s * points @ R.T + t for points (B, N, 3) and per-batch transforms, as numpy."""
  batch = len(scale)
  points = np.broadcast_to(points, (batch, *points.shape[1:]))
  return np.array(_apply_fn()(np.asarray(points, np.float32), scale, rotation, translation))


def alignment_error(source: np.ndarray, driving: np.ndarray) -> np.ndarray:
  """(F,) mean distance (normalised units) between the source (N, 3) and each driving frame
  (F, N, 3) after a similarity alignment of all landmarks: expression difference, not pose."""
  aligned = apply(driving, *similarity(driving, source[None]))
  return np.linalg.norm(aligned - source[None], axis=-1).mean(axis=-1)


def reference_frame(
  source: np.ndarray, driving: np.ndarray, has_face: np.ndarray, find_best: bool
) -> int:
  """The driving frame the relative motion is measured from: the first frame with a face, or
  (find_best) the frame whose aligned landmarks are closest to the source's."""
  candidates = np.flatnonzero(has_face)
  if not find_best:
    return int(candidates[0])
  errors = alignment_error(source, driving[candidates])
  return int(candidates[np.argmin(errors)])


def relative_landmarks(
  source: np.ndarray, driving: np.ndarray, reference: int, stable: np.ndarray | None = None
) -> np.ndarray:
  """The source landmarks moved by the driving motion since frame `reference`.

  With T_t the similarity (fitted on the stable landmarks) mapping the reference driving frame
  to frame t, and A the one mapping the reference frame onto the source:
    expression residual  e_t = T_t^-1(D_t) - D_ref, the motion left once the pose is undone;
    result               A(T_t(A^-1(S + lin(A) e_t))): the pose change T_t conjugated by A, so
                         it turns the head about the source face's own centre, at its own scale.
  Frame `reference` therefore gives back the source itself.

  Args:
    source: (N, 3) normalised source landmarks. driving: (F, N, 3) normalised driving landmarks.
    stable: landmark indices for the pose fits (face_topology.STABLE by default).
  Returns:
    (F, N, 3) float32, z re-centred (mean 0) as in the landmark convention.
  """
  stable = face_topology.STABLE if stable is None else stable
  frames = len(driving)
  reference_points = np.broadcast_to(driving[reference], driving.shape)
  pose = similarity(reference_points, driving, stable)  # T_t, reference -> frame t.
  align = similarity(driving[reference][None], source[None], stable)  # A, reference -> source.
  align = tuple(np.broadcast_to(a, (frames, *a.shape[1:])) for a in align)
  unposed = apply(driving, *geometry.invert_similarity(*pose))
  residual = unposed - reference_points
  residual_in_source = apply(residual, align[0], align[1], np.zeros_like(align[2]))
  moved = source[None] + residual_in_source
  moved = apply(moved, *geometry.invert_similarity(*align))
  moved = apply(moved, *pose)
  moved = apply(moved, *align)
  moved[..., 2] -= moved[..., 2].mean(axis=-1, keepdims=True)
  return moved.astype(np.float32)


def one_euro(
  series: np.ndarray, fps: float, *, min_cutoff: float, beta: float, d_cutoff: float = 1.0
) -> np.ndarray:
  """The One Euro filter (Casiez et al. 2012) along the first axis of `series` (F, ...).

  A first-order low-pass whose cutoff rises with the speed: slow motion (jitter of a landmark
  detector on a still face) is smoothed strongly (cutoff min_cutoff, Hz), fast motion (a turn of
  the head, a mouth opening) passes with little lag (cutoff min_cutoff + beta * speed, speed in
  units per second of the series). Every element is filtered on its own.
  """
  series = np.asarray(series, np.float64)
  if len(series) < 2:
    return series.astype(np.float32)

  def smoothing(cutoff):
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau * fps)

  filtered = np.empty_like(series)
  filtered[0] = series[0]
  speed = np.zeros_like(series[0])
  for t in range(1, len(series)):
    raw_speed = (series[t] - filtered[t - 1]) * fps
    a = smoothing(d_cutoff)
    speed = a * raw_speed + (1.0 - a) * speed
    a = smoothing(min_cutoff + beta * np.abs(speed))
    filtered[t] = a * series[t] + (1.0 - a) * filtered[t - 1]
  return filtered.astype(np.float32)


# Driving-landmark smoothing at strength 1: the One Euro filter's minimum cutoff (Hz) and speed
# coefficient (per normalised unit per second), run forward and backward. On the bundled clip it
# leaves 26% of the landmarks' frame-to-frame jitter and follows the motion with no lag; the
# causal filter at 1 Hz / beta 1 used before left 29% and lagged ~5 frames, which cost the
# output's correlation with the driver (prior alone: yaw 0.947 -> 0.98, pitch 0.86 -> 0.95).
SMOOTHING_MIN_CUTOFF = 2.0
SMOOTHING_BETA = 3.0


def smooth_landmarks(
  landmarks: np.ndarray, fps: float, strength: float, shots: list[tuple[int, int]]
) -> np.ndarray:
  """Zero-phase One Euro smoothing of (F, N, 3) driving landmarks, shot by shot (no smoothing
  across a cut).

  The whole clip is known before rendering, so the filter runs forward and then backward over
  each shot: the two passes' lags cancel (a causal filter trails every head turn and mouth
  opening by several frames). Each shot is first extended by half a second of its own motion
  mirrored about its end frames (as scipy's filtfilt pads), so its first and last frames do not
  lag either. strength 0 is off; 1 (the default of `reenact`) uses SMOOTHING_MIN_CUTOFF and
  SMOOTHING_BETA; larger values smooth more (the cutoff is divided by it).
  """
  if strength <= 0:
    return np.asarray(landmarks, np.float32)
  out = np.array(landmarks, np.float32)
  smooth = lambda series: one_euro(
    series, fps, min_cutoff=SMOOTHING_MIN_CUTOFF / strength, beta=SMOOTHING_BETA
  )
  for begin, end in shots:
    shot = out[begin:end]
    pad = min(len(shot) - 1, round(fps / 2))
    if pad > 0:
      before = 2 * shot[0] - shot[pad:0:-1]
      after = 2 * shot[-1] - shot[-2 : -pad - 2 : -1]
      shot = np.concatenate([before, shot, after])
    out[begin:end] = smooth(smooth(shot)[::-1])[::-1][pad : pad + end - begin]
  return _with_eye_shapes(out, np.asarray(landmarks, np.float32), shots, fps, strength)


# An eye's shape (its lids and iris about its centre) is smoothed far less than the face: a blink
# lasts a few frames, which the face's filter would flatten (on the bundled clip the prior's
# eye-opening correlation with the driver fell from 0.52 unsmoothed to 0.37).
EYE_SHAPE_MIN_CUTOFF = 8.0
EYE_SHAPE_BETA = 30.0


def _with_eye_shapes(smoothed, raw, shots, fps, strength) -> np.ndarray:
  """Each eye as its smoothed centre plus its own, lightly smoothed shape about the centre."""
  if raw.shape[1] < face_topology.NUM_LANDMARKS:
    return smoothed
  out = smoothed.copy()
  for eye in (
    np.concatenate([face_topology.RIGHT_EYE, face_topology.RIGHT_IRIS]),
    np.concatenate([face_topology.LEFT_EYE, face_topology.LEFT_IRIS]),
  ):
    shape = raw[:, eye] - raw[:, eye].mean(axis=1, keepdims=True)
    for begin, end in shots:
      part = shape[begin:end]
      filtered = one_euro(
        one_euro(part, fps, min_cutoff=EYE_SHAPE_MIN_CUTOFF / strength, beta=EYE_SHAPE_BETA)[::-1],
        fps,
        min_cutoff=EYE_SHAPE_MIN_CUTOFF / strength,
        beta=EYE_SHAPE_BETA,
      )[::-1]
      shape[begin:end] = filtered
    out[:, eye] = smoothed[:, eye].mean(axis=1, keepdims=True) + shape
  return out


CUT_THRESHOLD = 0.45


def shot_starts(signatures: np.ndarray, threshold: float = CUT_THRESHOLD) -> list[int]:
  """Frame indices where a new shot begins (always 0), from per-frame colour histograms.

  signatures: (F, K) normalised colour histograms (media.frame_signature). A cut is a
  Bhattacharyya distance between consecutive frames above `threshold` and far above the clip's
  typical frame-to-frame change (motion within a shot changes the histogram little).
  """
  signatures = np.asarray(signatures, np.float64)
  starts = [0]
  if len(signatures) < 2:
    return starts
  distance = signature_distance(signatures[1:], signatures[:-1])
  typical = float(np.median(distance))
  for index in np.flatnonzero((distance > threshold) & (distance > 4 * typical + 0.05)):
    starts.append(int(index) + 1)
  return starts


def signature_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Bhattacharyya distance in [0, 1] between colour histograms (..., K)."""
  overlap = np.sum(np.sqrt(np.asarray(a, np.float64) * np.asarray(b, np.float64)), axis=-1)
  return np.sqrt(np.clip(1.0 - overlap, 0.0, 1.0))


def shots_of(starts: list[int], num_frames: int) -> list[tuple[int, int]]:
  """[(begin, end)) of every shot, from the shot starts."""
  bounds = [*starts, num_frames]
  return [(bounds[i], bounds[i + 1]) for i in range(len(starts)) if bounds[i] < bounds[i + 1]]
