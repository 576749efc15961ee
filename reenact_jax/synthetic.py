"""Procedural talking-head clips with known 3D landmarks and masks, and still-portrait re-posing.

`render_frame` draws frame `frame_index` of synthetic clip `clip_index` as a pure function of its
arguments: every clip has its own identity (head shape, skin colour and texture, hair, clothes,
background), and over the clip the head turns (yaw/pitch/roll within ±25°/±15°/±10°), translates,
scales slightly, opens/closes its mouth, looks around and may blink. The landmarks are the
face_topology canonical face moved in 3D and projected orthographically, and the image is drawn
*at* those landmarks (face-oval skin, eyes, irises, lips, mouth cavity, nose, brows), with the
skin texture carried along by the head's affine motion, so warping by the true landmark motion
explains the change between two frames of a clip. Used by tests and smoke training
(`config.data.source = 'synthetic'`).

Conventions (reenact_jax/geometry.py): images float32 (H, W, 3) in [0, 1]; masks float32
{0, 1} (H, W, 1); landmarks (N, 3) float32, x and y normalised to [-1, 1] with
x_norm = 2 * x_px / W - 1 where pixel i's centre is at x_px = i + 0.5, z on the scale of x with
mean 0. Numpy and OpenCV only: this runs inside data-loading workers, never under jit.
"""

import functools
import math

import cv2
import numpy as np

from reenact_jax import face_topology

# Head motion limits over a clip, degrees (yaw about y, pitch about x, roll about the view axis).
MAX_YAW_DEG = 25.0
MAX_PITCH_DEG = 15.0
MAX_ROLL_DEG = 10.0
# Slight in-plane motion over a clip: translation (normalised units) and relative scale.
MAX_TRANSLATION = 0.06
MAX_SCALE_CHANGE = 0.05
# Widest mouth opening, as a fraction of the canonical face height (chin to forehead).
MAX_MOUTH_OPENING = 0.12
# Gaze: the irises' largest offset from their rest, in eye widths (across, along the eye).
MAX_GAZE_X, MAX_GAZE_Y = 0.18, 0.06
# A blink closes the upper lids onto the lower ones over this share of the clip, each way.
BLINK_HALF_DURATION = 0.06
BLINK_PROBABILITY = 0.6

# MediaPipe brow outlines as closed polygons (lower row outer -> inner, upper row back).
_LEFT_EYEBROW = np.array([276, 283, 282, 295, 285, 336, 296, 334, 293, 300])
_RIGHT_EYEBROW = np.array([46, 53, 52, 65, 55, 107, 66, 105, 63, 70])

# Pixel labels of a rendered frame, back to front.
_BACKGROUND, _NECK, _CLOTHES, _HAIR, _SKIN, _NOSE = range(6)
_BROWS, _LIPS, _MOUTH, _EYE_WHITE, _IRIS, _PUPIL = range(6, 12)
# Labels textured with the moving skin, and its brightness there (neck in the jaw's shadow).
_SKIN_GAIN = np.zeros(_PUPIL + 1, np.float32)
_SKIN_GAIN[[_NECK, _SKIN, _NOSE]] = 0.8, 1.0, 0.9
# Rows of a clip's colour table: the flat palette (one row per label; black for skin labels),
# then background, clothes and hair textures (image_size**2 rows each, row-major pixels).
_ROW_PER_PIXEL = np.zeros(_PUPIL + 1, np.int32)
_ROW_PER_PIXEL[[_BACKGROUND, _CLOTHES, _HAIR]] = 1

# cv2 drawing takes fixed-point vertices with this many fractional bits: sub-pixel accuracy.
_SHIFT_BITS = 4
_SHIFT_SCALE = float(1 << _SHIFT_BITS)
NUM_MESH_POINTS = face_topology.NUM_MESH_LANDMARKS


def _to_cv_points(xy_norm: np.ndarray, height: int, width: int) -> np.ndarray:
  """(K, 2) normalised (x, y) -> (K, 2) int32 fixed-point cv2 vertices (pixel centres at .0)."""
  xy_norm = np.asarray(xy_norm, np.float64)
  x_px = (xy_norm[:, 0] + 1.0) * (0.5 * width) - 0.5
  y_px = (xy_norm[:, 1] + 1.0) * (0.5 * height) - 0.5
  return np.round(np.stack([x_px, y_px], axis=-1) * _SHIFT_SCALE).astype(np.int32)


# ------------------------------------------------------------------------- clip identity


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int):
  """(H, W, C) float32 smooth noise in about [-1, 1]: a cells×cells random grid, cubic-upsampled."""
  grid = rng.uniform(-1.0, 1.0, size=(cells, cells, channels)).astype(np.float32)
  noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
  return noise.reshape(height, width, channels)


def _lip_arcs(polygon: np.ndarray, canonical: np.ndarray):
  """Splits an ordered lip contour at its corners: (upper arc, lower arc) interior indices."""
  x = canonical[polygon, 0]
  start, end = int(np.argmin(x)), int(np.argmax(x))
  n = len(polygon)
  arc_a = [polygon[(start + k) % n] for k in range(1, (end - start) % n)]
  arc_b = [polygon[(end + k) % n] for k in range(1, (start - end) % n)]
  arc_a, arc_b = np.array(arc_a, int), np.array(arc_b, int)
  if canonical[arc_a, 1].mean() > canonical[arc_b, 1].mean():  # y grows downwards.
    arc_a, arc_b = arc_b, arc_a
  return arc_a, arc_b


@functools.lru_cache(maxsize=4)
def _topology(num_landmarks: int):
  """Canonical face and per-landmark jaw weights shared by every clip."""
  if num_landmarks not in (468, 478):
    raise ValueError(
      f'num_landmarks must be 478 (MediaPipe with irises) or 468, got {num_landmarks}.'
    )
  canonical = np.asarray(face_topology.canonical_landmarks(), np.float64)[:num_landmarks]
  centre = canonical.mean(axis=0)
  oval = canonical[face_topology.FACE_OVAL]
  face_height = oval[:, 1].max() - oval[:, 1].min()
  face_half_width = 0.5 * (oval[:, 0].max() - oval[:, 0].min())

  # How far each landmark follows the jaw when the mouth opens: the lower lip fully at its
  # middle (less towards the corners), the chin and lower cheeks increasingly with depth below
  # the mouth, the upper lip and everything above not at all.
  inner = np.asarray(face_topology.LIPS_INNER)
  outer = np.asarray(face_topology.LIPS_OUTER)
  upper_inner, lower_inner = _lip_arcs(inner, canonical)
  upper_outer, lower_outer = _lip_arcs(outer, canonical)
  mouth_centre = canonical[inner].mean(axis=0)
  mouth_half_width = 0.5 * (canonical[inner, 0].max() - canonical[inner, 0].min())
  x_offset = canonical[:, 0] - mouth_centre[0]
  depth_below = (canonical[:, 1] - mouth_centre[1]) / (0.2 * face_height)
  jaw = np.clip(depth_below, 0.0, 1.0) ** 2 * (3.0 - 2.0 * np.clip(depth_below, 0.0, 1.0))
  lateral = np.clip(1.0 - (x_offset / (1.1 * face_half_width)) ** 2, 0.0, 1.0)
  weights = jaw * np.sqrt(lateral)
  lip_falloff = np.clip(1.0 - (x_offset / (1.2 * mouth_half_width)) ** 2, 0.15, 1.0)
  lower = np.concatenate([lower_inner, lower_outer])
  extra_lower = getattr(face_topology, 'LOWER_LIP', None)
  if extra_lower is not None:
    extra_upper = set(np.asarray(getattr(face_topology, 'UPPER_LIP', [])).tolist())
    extra_lower = [i for i in np.asarray(extra_lower).tolist() if i not in extra_upper]
    lower = np.concatenate([lower, np.asarray(extra_lower, int)])
  lower = np.unique(lower[lower < num_landmarks])
  weights[lower] = np.maximum(weights[lower], lip_falloff[lower])
  not_moving = set(np.concatenate([upper_inner, upper_outer]).tolist())
  not_moving |= set(np.flatnonzero(canonical[:, 1] < mouth_centre[1] - 0.02 * face_height))
  not_moving -= set(lower.tolist())
  weights[sorted(not_moving)] = 0.0
  # The upper lids (blinks) and the irises (gaze) move on their own.
  irises = np.arange(NUM_MESH_POINTS, num_landmarks)
  eye_moving = np.zeros(num_landmarks, bool)
  eye_moving[face_topology.UPPER_LIDS] = True
  eye_moving[irises] = True
  rigid = np.flatnonzero((weights == 0.0) & ~eye_moving)
  eye_width = np.linalg.norm(np.subtract(*canonical[list(face_topology.EYE_CORNERS[0]), :2]))
  # The canonical face may have its mouth open (it is a real portrait): gap between the middles
  # of the inner lips, which the jaw closes at zero opening.
  middle = lambda arc: arc[np.argmin(np.abs(canonical[arc, 0] - mouth_centre[0]))]
  rest_gap = max(0.0, canonical[middle(lower_inner), 1] - canonical[middle(upper_inner), 1])
  return dict(
    canonical=canonical,
    centre=centre,
    face_height=face_height,
    jaw_weights=weights,
    rest_gap=rest_gap,
    rigid=rigid,
    lid_closing=canonical[face_topology.LOWER_LIDS, 1] - canonical[face_topology.UPPER_LIDS, 1],
    iris_points=irises,
    eye_width=eye_width,
    upper_inner=upper_inner,
    lower_inner=lower_inner,
    oval=np.asarray(face_topology.FACE_OVAL),
    lips_outer=outer,
    lips_inner=inner,
    nose=np.asarray(face_topology.NOSE),
    brows=(_LEFT_EYEBROW, _RIGHT_EYEBROW),
    eyes=np.stack([np.asarray(face_topology.LEFT_EYE), np.asarray(face_topology.RIGHT_EYE)]),
    irises=np.stack([np.asarray(face_topology.LEFT_IRIS), np.asarray(face_topology.RIGHT_IRIS)]),
    has_irises=num_landmarks == 478,
  )


# 64 clips at 128 px hold about 55 MB (x4 at 256 px) per process.
@functools.lru_cache(maxsize=64)
def _clip(clip_index: int, image_size: int, seed: int, num_landmarks: int):
  """Identity, motion parameters and textures of one clip (cached: frames reuse them)."""
  topology = _topology(num_landmarks)
  rng = np.random.default_rng([abs(int(seed)), int(int(seed) < 0), int(clip_index)])
  size = image_size
  canonical = topology['canonical']

  # Identity: head shape and colours.
  shape_scale = np.array([rng.uniform(0.85, 1.08), rng.uniform(0.9, 1.08), 1.0])
  shape_scale[2] = shape_scale[0]
  skin = np.array([rng.uniform(0.55, 0.95), 0.0, 0.0])
  skin[1] = skin[0] * rng.uniform(0.7, 0.85)
  skin[2] = skin[1] * rng.uniform(0.7, 0.9)
  hair = rng.uniform(0.02, 0.45) * rng.uniform(0.6, 1.0, size=3)
  clothes = rng.uniform(0.1, 0.9, size=3)
  iris = rng.uniform(0.1, 0.6, size=3)
  lips = skin * np.array([0.85, 0.55, 0.55])
  brows = 0.6 * hair + 0.05

  # Face texture in canonical image space, carried by the head's affine motion per frame:
  # ellipsoid shading under a per-clip light, times smooth blotchy noise.
  oval = canonical[face_topology.FACE_OVAL]
  centre_xy = 0.5 * (oval[:, :2].max(axis=0) + oval[:, :2].min(axis=0))
  radii = 0.5 * (oval[:, :2].max(axis=0) - oval[:, :2].min(axis=0))
  coords = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
  u = (coords[None, :] - centre_xy[0]) / radii[0]
  v = (coords[:, None] - centre_xy[1]) / radii[1]
  facing = np.sqrt(np.clip(1.0 - u**2 - v**2, 0.0, 1.0))
  light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.2), -1.0])
  light /= np.linalg.norm(light)
  lambert = np.clip(u * light[0] + v * light[1] - facing * light[2], 0.0, 1.0)
  shading = 0.55 + 0.45 * lambert
  blotches = _smooth_noise(rng, size, size, 6, 1)[..., 0] * 0.06
  face_texture = skin[None, None, :] * (shading + blotches)[..., None]

  hair = hair[None, None, :] * (1.0 + 0.25 * _smooth_noise(rng, size, size, 12, 1))
  clothes = clothes[None, None, :] * (1.0 + 0.15 * _smooth_noise(rng, size, size, 5, 1))

  # Background: a colour wash, smooth noise and stripes at a random angle.
  background = rng.uniform(0.15, 0.85, size=3)[None, None, :] + 0.2 * _smooth_noise(
    rng, size, size, int(rng.integers(3, 8)), 3
  )
  angle = rng.uniform(0.0, math.pi)
  frequency = rng.uniform(1.5, 5.0)
  stripes = np.sin(
    math.pi * frequency * (coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle))
    + rng.uniform(0.0, 2.0 * math.pi)
  )
  background = background + rng.uniform(0.0, 0.15) * stripes[..., None]

  # Hair polygon: the face oval pushed outwards, most at the crown, not at all below the ears.
  oval_offsets = (oval[:, 1] - centre_xy[1]) / radii[1]
  hair_growth = rng.uniform(0.12, 0.3) * np.clip(0.35 - oval_offsets, 0.0, 1.0)

  # Motion: per-degree-of-freedom sums of sinusoids (weights sum to 1, so limits hold), with
  # frequencies in cycles per clip. Rows: yaw, pitch, roll, tx, ty, scale, mouth.
  num_waves = 3
  frequencies = rng.uniform(0.5, 1.6, size=(7, num_waves))
  frequencies[6] = rng.uniform(1.0, 3.0, size=num_waves)  # Speech is faster than head motion.
  amplitudes = rng.uniform(0.2, 1.0, size=(7, num_waves))
  amplitudes /= amplitudes.sum(axis=1, keepdims=True)
  phases = rng.uniform(0.0, 2.0 * math.pi, size=(7, num_waves))

  # Eyes, from their own stream (the draws above keep their values): gaze waves (rows x, y)
  # and at most one blink.
  eye_rng = np.random.default_rng([abs(int(seed)), int(int(seed) < 0), int(clip_index), 1])
  gaze_frequencies = eye_rng.uniform(0.5, 2.0, size=(2, num_waves))
  gaze_amplitudes = eye_rng.uniform(0.2, 1.0, size=(2, num_waves))
  gaze_amplitudes /= gaze_amplitudes.sum(axis=1, keepdims=True)
  gaze_phases = eye_rng.uniform(0.0, 2.0 * math.pi, size=(2, num_waves))
  blink_time = eye_rng.uniform(0.1, 0.9) if eye_rng.uniform() < BLINK_PROBABILITY else None

  # Canonical-space geometry of this head: its shape about the centre, and how far each
  # landmark moves down at full mouth opening. Opening 0 leaves 10% of the canonical rest gap
  # (lips just parted), opening 1 adds MAX_MOUTH_OPENING of the face height.
  jaw_weights = topology['jaw_weights']
  shape = canonical - topology['centre']
  shape[:, 1] -= 0.9 * topology['rest_gap'] * jaw_weights
  shape *= shape_scale
  jaw_opening = np.zeros_like(shape)
  jaw_opening[:, 1] = MAX_MOUTH_OPENING * topology['face_height'] * jaw_weights * shape_scale[1]

  as_f32 = lambda x: np.clip(x, 0.0, 1.0).astype(np.float32)
  row_base = np.arange(_PUPIL + 1, dtype=np.int32)
  row_base[[_BACKGROUND, _CLOTHES, _HAIR]] = _PUPIL + 1 + np.arange(3) * size * size
  # Flat colours of labels _BROWS.._PUPIL, in label order.
  palette = np.zeros((_PUPIL + 1, 3))
  palette[_BROWS:] = [brows, lips, (0.12, 0.03, 0.04), (0.92, 0.92, 0.9), iris, (0.04, 0.04, 0.05)]
  return dict(
    shape=shape,
    jaw_opening=jaw_opening,
    colour_table=np.concatenate(
      [as_f32(palette)] + [as_f32(t).reshape(-1, 3) for t in (background, clothes, hair)]
    ),
    row_base=row_base,
    pixel_index=np.arange(size * size, dtype=np.int32).reshape(size, size),
    face_texture=as_f32(face_texture),
    hair_growth=1.0 + hair_growth[:, None],
    frequencies=frequencies,
    amplitudes=amplitudes,
    phases=phases,
    gaze_waves=(gaze_frequencies, gaze_amplitudes, gaze_phases),
    blink_time=blink_time,
    shape_scale=shape_scale,
  )


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
  """(3, 3) rotation R = R_roll(z) @ R_yaw(y) @ R_pitch(x), acting on column vectors."""
  yaw, pitch, roll = math.radians(yaw_deg), math.radians(pitch_deg), math.radians(roll_deg)
  cy, sy = math.cos(yaw), math.sin(yaw)
  cp, sp = math.cos(pitch), math.sin(pitch)
  cr, sr = math.cos(roll), math.sin(roll)
  # Rows of R_yaw @ R_pitch, then the roll mixes the first two (scalar maths: this is hot).
  row0, row1, row2 = (cy, sy * sp, sy * cp), (0.0, cp, -sp), (-sy, cy * sp, cy * cp)
  return np.array(
    [
      [cr * u - sr * v for u, v in zip(row0, row1, strict=True)],
      [sr * u + cr * v for u, v in zip(row0, row1, strict=True)],
      row2,
    ]
  )


def clip_motion(clip_index: int, frame_index: int, *, num_frames: int, seed: int) -> dict:
  """Head pose, mouth, gaze and blink of one synthetic frame.

  Returns:
    dict of floats: 'yaw', 'pitch', 'roll' (degrees), 'tx', 'ty' (normalised units),
    'scale' (relative, 1 = canonical), 'mouth' (opening in [0, 1]), 'gaze_x', 'gaze_y' (the
    irises' offset, eye widths) and 'blink' (0 open .. 1 closed).
  """
  if not 0 <= frame_index < num_frames:
    raise ValueError(f'frame_index must be in [0, num_frames={num_frames}), got {frame_index}.')
  if clip_index < 0:
    raise ValueError(f'clip_index must be non-negative, got {clip_index}.')
  clip = _clip(clip_index, 8, seed, 478)  # Motion parameters do not depend on the size.
  return _motion(clip, frame_index, num_frames)


def _motion(clip: dict, frame_index: int, num_frames: int) -> dict:
  time = frame_index / num_frames
  waves = (
    (clip['amplitudes'] * np.sin(2.0 * math.pi * clip['frequencies'] * time + clip['phases']))
    .sum(axis=1)
    .tolist()
  )
  frequencies, amplitudes, phases = clip['gaze_waves']
  gaze = (amplitudes * np.sin(2.0 * math.pi * frequencies * time + phases)).sum(axis=1).tolist()
  return dict(
    yaw=MAX_YAW_DEG * waves[0],
    pitch=MAX_PITCH_DEG * waves[1],
    roll=MAX_ROLL_DEG * waves[2],
    tx=MAX_TRANSLATION * waves[3],
    ty=MAX_TRANSLATION * waves[4],
    scale=1.0 + MAX_SCALE_CHANGE * waves[5],
    # Rectified so that the mouth rests closed for part of the clip, like speech pauses.
    mouth=min(1.0, max(0.0, 1.4 * waves[6] + 0.2)),
    gaze_x=MAX_GAZE_X * gaze[0],
    gaze_y=MAX_GAZE_Y * gaze[1],
    blink=0.0
    if clip['blink_time'] is None
    else max(0.0, 1.0 - abs(time - clip['blink_time']) / BLINK_HALF_DURATION),
  )


@functools.lru_cache(maxsize=4)
def _texture_fit(num_landmarks: int):
  """Pseudo-inverse of the canonical rigid landmarks in homogeneous pixel coordinates."""
  topology = _topology(num_landmarks)
  rigid = topology['canonical'][topology['rigid'], :2]
  design = np.concatenate([rigid, np.ones((len(rigid), 1))], axis=1)
  return np.linalg.pinv(design)  # (3, K)


def _landmarks_and_texture_affine(clip, topology, frame_index, num_frames, num_landmarks):
  """(landmarks (N, 3) float32, affine (2, 3)) of one frame: the head pose applied to the clip's
  face, and the least-squares affine of its rigid landmarks that carries the skin texture
  (canonical normalised (x, y, 1) -> frame normalised (x, y))."""
  motion = _motion(clip, frame_index, num_frames)
  # Landmarks: identity shape and jaw opening in canonical space, then the 3D head motion
  # about the face centre, orthographic projection (x, y kept), z re-centred.
  linear = motion['scale'] * _rotation(motion['yaw'], motion['pitch'], motion['roll'])
  mouth = motion['mouth']
  shape = clip['shape'] + mouth * clip['jaw_opening']
  scale_x, scale_y = clip['shape_scale'][:2]
  shape[face_topology.UPPER_LIDS, 1] += motion['blink'] * scale_y * topology['lid_closing']
  gaze = np.array([motion['gaze_x'] * scale_x, motion['gaze_y'] * scale_y])
  shape[topology['iris_points'], :2] += topology['eye_width'] * gaze
  points = shape @ linear.T
  mean_z = linear[2] @ shape.mean(axis=0)
  centre = topology['centre']
  points += np.array([centre[0] + motion['tx'], centre[1] + motion['ty'], -mean_z])
  landmarks = points.astype(np.float32)
  xy = landmarks[:, :2].astype(np.float64)
  affine = (_texture_fit(num_landmarks) @ xy[topology['rigid']]).T  # (2, 3) normalised.
  return landmarks, affine


def true_flow(
  clip_index: int,
  source_frame: int,
  driving_frame: int,
  *,
  image_size: int,
  num_frames: int,
  seed: int,
  num_landmarks: int = 478,
) -> np.ndarray:
  """The true backward 2D flow of the skin from a driving frame to a source frame of one clip.

  The skin texture of a synthetic frame is the clip's texture moved by the frame's affine A_f
  (its rigid landmarks' least-squares affine), so a driving pixel p shows the skin that the
  source shows at A_source(A_driving^-1(p)).

  Returns:
    (H, W, 2) float32 (dx, dy) in normalised units; meaningful on the driving frame's skin
    (its 'mask').
  """
  topology = _topology(num_landmarks)
  clip = _clip(clip_index, image_size, seed, num_landmarks)
  _, source_affine = _landmarks_and_texture_affine(
    clip, topology, source_frame, num_frames, num_landmarks
  )
  _, driving_affine = _landmarks_and_texture_affine(
    clip, topology, driving_frame, num_frames, num_landmarks
  )
  coords = (np.arange(image_size) + 0.5) * (2.0 / image_size) - 1.0
  grid = np.stack(np.meshgrid(coords, coords), axis=-1)  # (H, W, 2) normalised (x, y).
  canonical = (grid - driving_affine[:, 2]) @ np.linalg.inv(driving_affine[:, :2]).T
  source = canonical @ source_affine[:, :2].T + source_affine[:, 2]
  return (source - grid).astype(np.float32)


def render_frame(
  clip_index: int,
  frame_index: int,
  *,
  image_size: int,
  num_frames: int,
  seed: int,
  num_landmarks: int = 478,
) -> dict:
  """Frame `frame_index` of synthetic clip `clip_index`, a deterministic function of the args.

  Args:
    clip_index: which clip (identity and motion), any non-negative int.
    frame_index: in [0, num_frames).
    image_size: H = W, pixels.
    num_frames: clip length; the motion spans about one to three cycles per clip.
    seed: dataset seed; clips of different seeds differ.
    num_landmarks: 478 (with irises) or 468.

  Returns:
    dict with 'image' (H, W, 3) float32 in [0, 1], 'landmarks' (N, 3) float32 normalised
    (contract convention; x, y within [-1, 1]), 'mask' (H, W, 1) float32 face-oval fill,
    'matte' (H, W, 1) float32 person matte (1 on head, hair, neck and clothes).
  """
  if not 0 <= frame_index < num_frames:
    raise ValueError(f'frame_index must be in [0, num_frames={num_frames}), got {frame_index}.')
  if image_size < 8:
    raise ValueError(f'image_size must be at least 8 pixels, got {image_size}.')
  if clip_index < 0:
    raise ValueError(f'clip_index must be non-negative, got {clip_index}.')
  topology = _topology(num_landmarks)
  clip = _clip(clip_index, image_size, seed, num_landmarks)
  size = image_size
  landmarks, affine = _landmarks_and_texture_affine(
    clip, topology, frame_index, num_frames, num_landmarks
  )
  # Draw from the float32 landmarks we return: the mask is exactly crops.face_oval_mask of them.
  xy = landmarks[:, :2].astype(np.float64)

  # Skin texture follows the least-squares affine motion of the rigid landmarks. Normalised
  # n and pixel p coordinates relate by p = k n + b on both axes (square image).
  k, b = size / 2.0, size / 2.0 - 0.5
  offset = k * affine[:, 2] + b - affine[:, :2] @ np.array([b, b])
  affine_px = np.concatenate([affine[:, :2], offset[:, None]], axis=1)
  face = cv2.warpAffine(
    clip['face_texture'],
    affine_px,
    (size, size),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_REPLICATE,
  )

  # Construction points beyond the landmarks: hair outline (the face oval pushed out), neck
  # and shoulders below the jaw (outside the face mask, as in real crops), iris centres.
  oval_xy = xy[topology['oval']]
  oval_centre = np.add.reduce(oval_xy) / len(oval_xy)
  hair_xy = oval_centre + (oval_xy - oval_centre) * clip['hair_growth']
  jaw_left = oval_xy[np.argmin(oval_xy[:, 0] - 2.0 * oval_xy[:, 1])]
  jaw_right = oval_xy[np.argmax(oval_xy[:, 0] + 2.0 * oval_xy[:, 1])]
  shoulders_y = max(jaw_left[1], jaw_right[1]) + 0.12
  body_xy = np.array(
    [
      jaw_left,
      jaw_right,
      jaw_right + [0.05, 0.3],
      jaw_left + [-0.05, 0.3],
      [jaw_left[0] - 0.2, shoulders_y],
      [jaw_right[0] + 0.2, shoulders_y],
      [1.2, shoulders_y + 0.3],
      [1.2, 1.2],
      [-1.2, 1.2],
      [-1.2, shoulders_y + 0.3],
    ]
  )
  eyes = topology['eyes']
  if topology['has_irises']:
    iris_xy = xy[topology['irises']]  # (2, K, 2)
    iris_centres = np.add.reduce(iris_xy, axis=1) / iris_xy.shape[1]
    iris_radii = np.sqrt(((iris_xy - iris_centres[:, None]) ** 2).sum(axis=-1).max(axis=1))
  else:  # 468-point topology: no iris landmarks, look straight ahead.
    eye_xy = xy[eyes]
    iris_centres = eye_xy.mean(axis=1)
    iris_radii = 0.3 * (eye_xy[..., 0].max(axis=1) - eye_xy[..., 0].min(axis=1))
  points_px = _to_cv_points(np.concatenate([xy, hair_xy, body_xy, iris_centres]), size, size)
  landmarks_px = points_px[: len(xy)]
  hair_px = points_px[len(xy) : len(xy) + len(hair_xy)]
  body_px = points_px[len(xy) + len(hair_xy) : -2]
  iris_px = points_px[-2:]

  # One label per pixel, painted back to front; colours and textures are looked up at the end.
  labels = np.zeros((size, size), np.uint8)
  fill = lambda canvas, points, label: cv2.fillPoly(
    canvas, [points], label, cv2.LINE_8, _SHIFT_BITS
  )
  fill(labels, body_px[:4], _NECK)
  fill(labels, body_px[4:], _CLOTHES)
  fill(labels, hair_px, _HAIR)
  fill(labels, landmarks_px[topology['oval']], _SKIN)
  mask = (labels == _SKIN).astype(np.float32)[..., None]
  fill(labels, cv2.convexHull(landmarks_px[topology['nose']]), _NOSE)
  for brow in topology['brows']:
    fill(labels, landmarks_px[brow], _BROWS)
  fill(labels, landmarks_px[topology['lips_outer']], _LIPS)
  fill(labels, landmarks_px[topology['lips_inner']], _MOUTH)
  eye_regions = np.zeros((size, size), np.uint8)
  irises = np.zeros((size, size), np.uint8)
  for eye, centre_px, radius in zip(eyes, iris_px, iris_radii, strict=True):
    fill(eye_regions, landmarks_px[eye], 1)
    radius_px = round(radius * size / 2.0 * _SHIFT_SCALE)
    centre_px = (int(centre_px[0]), int(centre_px[1]))
    cv2.circle(irises, centre_px, radius_px, _IRIS, -1, cv2.LINE_8, _SHIFT_BITS)
    cv2.circle(irises, centre_px, radius_px // 2, _PUPIL, -1, cv2.LINE_8, _SHIFT_BITS)
  labels = np.where(eye_regions == 1, np.maximum(irises, _EYE_WHITE), labels)

  # Colours by one gather from the per-clip table (flat colours and static textures), plus the
  # moving skin where the label is skin-coloured (those labels' table rows are black).
  rows = clip['row_base'].take(labels) + _ROW_PER_PIXEL.take(labels) * clip['pixel_index']
  image = clip['colour_table'].take(rows, axis=0)
  image += face * _SKIN_GAIN.take(labels)[..., None]
  matte = (labels != _BACKGROUND).astype(np.float32)[..., None]
  return dict(image=image, landmarks=landmarks, mask=mask, matte=matte)
