"""Occluded faces: which parts of a driving face an occluder hides, their landmarks filled in, and
synthetic occluders (hands and objects) to measure it with.

The face mesh has no per-landmark visibility and no lower presence score when a hand or an object
covers part of the face (on the bundled clip its presence stays 1.00 with the mouth, an eye or the
nose covered); it fits a plausible face through the occluder, so the covered part's landmarks
stop following the face: a covered mouth reads as closed or as the occluder's edge. What gives the
occluder away is the image: the face's own appearance is steady over a shot, an occluder is not
part of it.

`region_visibility` compares each frame's face, aligned to the canonical face by its stable
landmarks (`aligned_face`), with the shot's robust per-pixel median face, region by region
(REGIONS: the eyes, the nose, the mouth, the jaw, the cheeks, the forehead). Each pixel is judged
by its own spread over the shot, so an opening mouth or a blink (the face's own motion, a part of
its region) is not taken for an occluder; nor are its lips left out of the comparison (through an
object over the mouth the face mesh draws the lips around the object). A region is occluded where
more than OCCLUDED_FRACTION of its pixels are far from the median, and stays so through the
neighbouring frames with more than CONTINUED_FRACTION of that. `fill_occluded` gives an occluded
region's landmarks the expression of the nearest frames where it is seen (interpolated in the
head's own frame) and the frame's head pose (fitted on the stable landmarks that are seen).

The median needs the face's own appearance in most of a shot's frames: a region covered for more
than half a shot is not found. A hand of the face's own colour and shading is mostly not found
either: colour alone cannot tell it from the cheek it covers.
"""

import functools

import cv2
import numpy as np
from skimage import data as skimage_data

from reenact_jax import face, face_topology, media

# Regions: (name, the canonical landmarks whose mean is the region's anchor). A landmark, and a
# pixel of the aligned face, belongs to the region of the nearest anchor.
REGIONS = (
  ('right_eye', face_topology.RIGHT_EYE),
  ('left_eye', face_topology.LEFT_EYE),
  ('nose', np.array([1, 4, 5, 195])),
  ('mouth', face_topology.LIPS_OUTER),
  ('jaw', np.array([152, 148, 377, 175])),
  ('right_cheek', np.array([50, 205, 187, 123])),
  ('left_cheek', np.array([280, 425, 411, 352])),
  ('forehead', np.array([10, 151, 9, 108, 337])),
)
REGION_NAMES = tuple(name for name, _ in REGIONS)

# The aligned face: ALIGNED_SIZE pixels across canonical [-ALIGNED_EXTENT, ALIGNED_EXTENT].
ALIGNED_SIZE = 48
ALIGNED_EXTENT = 0.7
# A pixel is far from the shot's median face when its RGB distance (in [0, 1] units, after the
# frame's brightness is matched to the shot's) exceeds max(OUTLIER_MADS robust deviations of that
# pixel over the shot, OUTLIER_FLOOR).
OUTLIER_MADS = 3.0
OUTLIER_FLOOR = 0.12
# A region is occluded where more than this fraction of its compared pixels is far.
OCCLUDED_FRACTION = 0.4
# A run goes on through its neighbouring frames with more than this part of OCCLUDED_FRACTION.
CONTINUED_FRACTION = 0.6


def _to_grid(points_xy: np.ndarray) -> np.ndarray:
  """Canonical (x, y) -> aligned-face pixel coordinates."""
  return (points_xy + ALIGNED_EXTENT) * (ALIGNED_SIZE / (2 * ALIGNED_EXTENT)) - 0.5


@functools.cache
def _canonical() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(the canonical landmarks in aligned pixels (N, 2), each landmark's region (N,), each aligned
  pixel's region (S, S), -1 outside the face oval)."""
  canonical = face_topology.canonical_landmarks()[:, :2]
  grid = _to_grid(canonical)
  anchors = np.stack([grid[indices].mean(axis=0) for _, indices in REGIONS])
  landmark_region = np.argmin(
    np.linalg.norm(grid[:, None] - anchors[None], axis=-1), axis=1
  ).astype(np.int32)
  landmark_region[face_topology.RIGHT_IRIS] = REGION_NAMES.index('right_eye')  # With their eyes.
  landmark_region[face_topology.LEFT_IRIS] = REGION_NAMES.index('left_eye')
  ys, xs = np.mgrid[:ALIGNED_SIZE, :ALIGNED_SIZE]
  pixels = np.stack([xs, ys], axis=-1).astype(np.float32)
  pixel_region = np.argmin(
    np.linalg.norm(pixels[:, :, None] - anchors[None, None], axis=-1), axis=-1
  ).astype(np.int32)
  oval = np.zeros((ALIGNED_SIZE, ALIGNED_SIZE), np.uint8)
  cv2.fillPoly(oval, [np.round(grid[face_topology.FACE_OVAL]).astype(np.int32)], 1)
  pixel_region[oval == 0] = -1
  return grid, landmark_region, pixel_region


def landmark_regions(num_landmarks: int = face_topology.NUM_LANDMARKS) -> np.ndarray:
  """(N,) int: the index in REGIONS of each landmark's region."""
  return _canonical()[1][:num_landmarks]


def _robust_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """(2, 3) float64 2D similarity mapping source (K, 2+) onto target (K, 2+) points, fitted
  by least median of squares: here, unlike motion.similarity's least squares, up to half of
  the points may be an occluder's jumped landmarks without turning the fit."""
  matrix, _ = cv2.estimateAffinePartial2D(
    np.ascontiguousarray(np.asarray(source, np.float32)[:, :2]),
    np.ascontiguousarray(np.asarray(target, np.float32)[:, :2]),
    method=cv2.LMEDS,
  )
  return matrix.astype(np.float64)


def _alignment(points: np.ndarray) -> np.ndarray:
  """(2, 3) affine: frame pixels -> aligned-face pixels, a similarity fitted on STABLE."""
  stable = face_topology.STABLE
  return _robust_similarity(points[stable], _canonical()[0][stable])


def aligned_face(frame: np.ndarray, points: np.ndarray) -> np.ndarray:
  """(S, S, 3) uint8: the face of one RGB uint8 frame aligned to the canonical face by its
  landmarks `points` (N, 3, frame pixels). uint8: a long driving clip keeps one per frame."""
  return cv2.warpAffine(
    frame,
    _alignment(points),
    (ALIGNED_SIZE, ALIGNED_SIZE),
    flags=cv2.INTER_AREA,
    borderMode=cv2.BORDER_REPLICATE,
  )


# The shot's median face and each pixel's spread are taken over at most this many of its frames,
# evenly spaced (memory and time stay bounded on a long shot); frames are compared in chunks.
MEDIAN_FRAMES = 300
_CHUNK = 512


def _grown(occluded: np.ndarray, going_on: np.ndarray) -> np.ndarray:
  """Hysteresis over frames: `occluded` (F,) bool grown into the neighbouring frames where
  `going_on`, as far as they run (never across the shot's ends)."""
  while True:
    before = np.concatenate([[False], occluded[:-1]])
    after = np.concatenate([occluded[1:], [False]])
    grown = occluded | (going_on & (before | after))
    if (grown == occluded).all():
      return grown
    occluded = grown


def region_visibility(faces: np.ndarray) -> np.ndarray:
  """(F, R) bool, False where a region of a frame is occluded.

  Args:
    faces: (F, S, S, 3) uint8 aligned faces of one shot's frames with a face (aligned_face).
  """
  frames = len(faces)
  visible = np.ones((frames, len(REGIONS)), bool)
  if frames < 3:
    return visible
  pixel_region = _canonical()[2]
  face_pixels = pixel_region >= 0
  # Match each frame's brightness to the shot's (the light or the exposure changes).
  level = np.array([np.median(face[face_pixels]) for face in faces]) * (1.0 / 255.0)
  gain = np.median(level) / np.maximum(level, 1e-3) * (1.0 / 255.0)

  def normalised(indices) -> np.ndarray:
    return np.asarray(faces[indices], np.float32) * gain[indices, None, None, None].astype(
      np.float32
    )

  sample = normalised(
    np.unique(np.linspace(0, frames - 1, min(frames, MEDIAN_FRAMES)).round().astype(int))
  )
  median = np.median(sample, axis=0)
  spread = 1.4826 * np.median(np.abs(sample - median), axis=0)
  threshold = np.maximum(OUTLIER_MADS * np.linalg.norm(spread, axis=-1), OUTLIER_FLOOR)
  members = [pixel_region == index for index in range(len(REGIONS))]
  counted = np.array([mask.sum() for mask in members])
  far_count = np.zeros((frames, len(REGIONS)))
  for start in range(0, frames, _CHUNK):
    chunk = np.arange(start, min(frames, start + _CHUNK))
    far = np.linalg.norm(normalised(chunk) - median, axis=-1) > threshold  # (C, S, S)
    for index, mask in enumerate(members):
      far_count[chunk, index] = far[:, mask].sum(axis=1)
  fraction = np.where(counted >= 8, far_count / np.maximum(counted, 1), 0.0)
  for index in range(len(REGIONS)):
    # An occluder's run goes on through the frames next to it that are far enough.
    occluded = _grown(
      fraction[:, index] > OCCLUDED_FRACTION,
      fraction[:, index] > OCCLUDED_FRACTION * CONTINUED_FRACTION,
    )
    visible[:, index] = ~occluded
  return visible


def _shifted(values: np.ndarray, frames: np.ndarray, wanted: np.ndarray) -> np.ndarray:
  """values (K, ...) known at sorted `frames` (K,), linearly interpolated (held past the ends) at
  `wanted` (M,)."""
  flat = values.reshape(len(values), -1)
  out = np.stack([np.interp(wanted, frames, column) for column in flat.T], axis=-1)
  return out.reshape(len(wanted), *values.shape[1:])


def fill_occluded(
  landmarks: np.ndarray, visible: np.ndarray, stable: np.ndarray | None = None
) -> np.ndarray:
  """(F, N, D) landmarks of one shot with each occluded region's landmarks filled in.

  An occluded region (visible[t, r] False) takes, in the head's own frame, the shape it has at
  the nearest frames where it is seen (interpolated between the one before and the one after),
  placed by frame t's head pose: a similarity (x, y; z scaled alike) fitted on the stable
  landmarks of its regions that are seen (all stable landmarks when fewer than 6 are). A region
  seen in no frame is left as found.

  Args:
    landmarks: (F, N, D >= 2) in any one pixel or normalised unit.
    visible: (F, R) region_visibility.
  """
  stable = face_topology.STABLE if stable is None else np.asarray(stable)
  out = np.array(landmarks, np.float32)
  if visible.all():
    return out
  frames, count = out.shape[:2]
  regions = landmark_regions(count)
  reference = out[np.flatnonzero(visible.all(axis=1))[:1]]
  reference = reference[0] if len(reference) else np.median(out, axis=0)
  # Each frame's pose: a 2D similarity reference -> frame on the stable landmarks it shows.
  poses = []
  for t in range(frames):
    seen = stable[visible[t, regions[stable]]]
    fit = seen if len(seen) >= 6 else stable
    poses.append(_robust_similarity(reference[fit], out[t, fit]))
  poses = np.stack(poses)  # (F, 2, 3)
  linear = poses[:, :, :2]
  scale = np.sqrt(np.abs(np.linalg.det(linear)))
  # The landmarks in the reference frame's pose (the head's motion undone).
  inverse = np.linalg.inv(linear)
  unposed = out.astype(np.float64).copy()
  unposed[..., :2] = np.einsum('fij,fnj->fni', inverse, out[..., :2] - poses[:, None, :, 2])
  if out.shape[-1] > 2:
    unposed[..., 2:] = out[..., 2:] / scale[:, None, None]
  for index in range(visible.shape[1]):
    hidden = np.flatnonzero(~visible[:, index])
    seen = np.flatnonzero(visible[:, index])
    members = np.flatnonzero(regions == index)
    if not len(hidden) or not len(seen) or not len(members):
      continue
    shape = _shifted(unposed[seen][:, members], seen, hidden)  # (H, M, D)
    posed = shape.copy()
    posed[..., :2] = np.einsum('hij,hmj->hmi', linear[hidden], shape[..., :2])
    posed[..., :2] += poses[hidden, None, :, 2]
    if out.shape[-1] > 2:
      posed[..., 2:] = shape[..., 2:] * scale[hidden, None, None]
    out[hidden[:, None], members[None]] = posed
  return out


# ------------------------------------------------------------------------ synthetic occluders

# Where an occluder is centred: the mean of these landmarks of the frame.
OCCLUDER_PARTS = (
  ('mouth', face_topology.LIPS_OUTER),
  ('right_eye', face_topology.RIGHT_EYE),
  ('left_eye', face_topology.LEFT_EYE),
  ('nose', np.array([1, 4, 5])),
  ('right_cheek', np.array([205, 187])),
  ('left_cheek', np.array([425, 411])),
  ('jaw', np.array([152, 175, 17])),
)
# Textures of the objects: colour images in scikit-image's own data directory (no download).
_TEXTURES = ('coffee', 'chelsea', 'rocket', 'brick', 'grass', 'gravel', 'hubble_deep_field')


@functools.cache
def _texture(name: str) -> np.ndarray:
  image = getattr(skimage_data, name)()
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


# The face oval's widest points (cheek to cheek): an occluder's size is in this width.
FACE_WIDTH = (234, 454)


def _hand_mask(shape, centre, radius, angle, rng) -> np.ndarray:
  """A palm (an ellipse) with four fingers (thick lines) pointing along `angle` (radians)."""
  mask = np.zeros(shape, np.uint8)
  direction = np.array([np.cos(angle), np.sin(angle)])
  across = np.array([-direction[1], direction[0]])
  palm = centre - direction * radius * 0.5
  cv2.ellipse(
    mask,
    tuple(int(v) for v in np.round(palm)),
    (max(1, int(radius * 0.7)), max(1, int(radius * 0.55))),
    float(np.degrees(angle)),
    0,
    360,
    1,
    -1,
  )
  thickness = max(2, int(radius * 0.28))
  for k, offset in enumerate((-0.45, -0.15, 0.15, 0.45)):
    length = radius * (1.0 + 0.25 * (k in (1, 2))) * rng.uniform(0.85, 1.1)
    start = palm + across * offset * radius
    end = start + direction * length
    cv2.line(
      mask,
      tuple(int(v) for v in np.round(start)),
      tuple(int(v) for v in np.round(end)),
      1,
      thickness,
    )
  return mask


def paste_occluder(
  frame: np.ndarray, points: np.ndarray, rng: np.random.Generator, spec: dict | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
  """One synthetic occluder on an RGB uint8 frame whose face has landmarks `points` (N, 2+,
  frame pixels): a hand (the face's own skin tone, shaded, four fingers) or an object (a patch
  of a natural image, an ellipse).

  `spec` (returned; pass it back to paste the same occluder on the next frames of a run, moved
  with the face) holds the part covered, the kind, the size in face widths, the angle and the
  texture. Returns (occluded frame, (H, W) float32 coverage in [0, 1], spec).
  """
  if spec is None:
    spec = {
      'part': int(rng.integers(len(OCCLUDER_PARTS))),
      'kind': 'hand' if rng.random() < 0.5 else 'object',
      'size': float(rng.uniform(0.25, 0.4)),
      'angle': float(rng.uniform(0, 2 * np.pi)),
      'aspect': float(rng.uniform(0.5, 1.0)),
      'texture': _TEXTURES[int(rng.integers(len(_TEXTURES)))],
      'offset': rng.uniform(0, 1, 2).tolist(),
      'shade': rng.uniform(0.8, 1.15, 3).tolist(),
    }
  left, right = FACE_WIDTH
  width = float(np.linalg.norm(points[left, :2] - points[right, :2]))
  centre = points[OCCLUDER_PARTS[spec['part']][1], :2].mean(axis=0)
  radius = spec['size'] * width
  shape = frame.shape[:2]
  if spec['kind'] == 'hand':
    mask = _hand_mask(shape, centre, radius, spec['angle'], np.random.default_rng(spec['part']))
    cheek = points[[205, 425], :2].mean(axis=0)
    x, y = np.clip(np.round(cheek).astype(int), 0, [shape[1] - 1, shape[0] - 1])
    skin = frame[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3].reshape(-1, 3).mean(axis=0)
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    along = (xs - centre[0]) * np.cos(spec['angle']) + (ys - centre[1]) * np.sin(spec['angle'])
    light = 1.0 + 0.15 * np.clip(along / max(radius, 1.0), -1, 1)  # Shading across the hand.
    fill = np.clip(skin * np.asarray(spec['shade']) * light[..., None], 0, 255)
  else:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(
      mask,
      tuple(int(v) for v in np.round(centre)),
      (max(1, int(radius)), max(1, int(radius * spec['aspect']))),
      float(np.degrees(spec['angle'])),
      0,
      360,
      1,
      -1,
    )
    texture = _texture(spec['texture'])
    side = int(min(texture.shape[:2]) * 0.5)
    oy, ox = (np.asarray(spec['offset']) * (np.asarray(texture.shape[:2]) - side)).astype(int)
    patch = cv2.resize(texture[oy : oy + side, ox : ox + side], (2 * int(radius) + 1,) * 2)
    fill = np.zeros(frame.shape, np.float64)
    x0, y0 = int(round(centre[0])) - int(radius), int(round(centre[1])) - int(radius)
    ys0, xs0 = max(0, y0), max(0, x0)
    ys1 = min(shape[0], y0 + patch.shape[0])
    xs1 = min(shape[1], x0 + patch.shape[1])
    if ys1 > ys0 and xs1 > xs0:
      fill[ys0:ys1, xs0:xs1] = patch[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]
  coverage = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.8)
  out = frame * (1.0 - coverage[..., None]) + fill * coverage[..., None]
  return np.clip(np.round(out), 0, 255).astype(np.uint8), coverage, spec


def occluded_runs(
  num_frames: int, fraction: float, rng: np.random.Generator, run_lengths=(5, 16)
) -> np.ndarray:
  """(F,) int: the run index of each frame's occluder (-1: none), runs of run_lengths[0] to
  run_lengths[1] - 1 frames covering at least `fraction` of the frames and at most one run more."""
  blocks, start = [], 0
  while start < num_frames:
    length = int(rng.integers(*run_lengths))
    blocks.append((start, min(num_frames, start + length)))
    start += length
  order = rng.permutation(len(blocks))
  runs = np.full(num_frames, -1, np.int32)
  covered = 0
  for run, block in enumerate(order):
    if covered >= fraction * num_frames:
      break
    begin, end = blocks[block]
    runs[begin:end] = run
    covered += end - begin
  return runs


def occlude_clip(
  frames: list[np.ndarray], landmarks: list[np.ndarray | None], fraction: float, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
  """Synthetic occluders on `fraction` of a clip's frames, in runs: each run one hand or object
  over one part of the face, moving with it. `landmarks` (frame pixels, None: no face) place
  them. Returns (frames, (F, H, W) float32 coverage)."""
  rng = np.random.default_rng(seed)
  runs = occluded_runs(len(frames), fraction, rng)
  specs: dict[int, dict] = {}
  out, coverage = [], np.zeros((len(frames), *frames[0].shape[:2]), np.float32)
  for index, (frame, points) in enumerate(zip(frames, landmarks, strict=True)):
    run = int(runs[index])
    if run < 0 or points is None:
      out.append(frame)
      continue
    occluded, coverage[index], specs[run] = paste_occluder(frame, points, rng, specs.get(run))
    out.append(occluded)
  return out, coverage


def covered_regions(points: np.ndarray, coverage: np.ndarray, fraction: float = 0.3) -> np.ndarray:
  """(R,) bool: the regions of a face (landmarks `points`, frame pixels) of which more than
  `fraction` of the landmarks lie under an occluder's `coverage` (H, W) - the truth that
  region_visibility is checked against."""
  regions = landmark_regions(len(points))
  h, w = coverage.shape
  xs = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
  ys = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
  under = coverage[ys, xs] > 0.5
  return np.array([under[regions == r].mean() > fraction for r in range(len(REGIONS))])


def write_occluded_clip(input_path, output_path, fraction: float = 0.5, seed: int = 0) -> dict:
  """Writes `input_path`'s video with synthetic occluders (occlude_clip) on `fraction` of its
  frames to `output_path` (same frame rate and size). Returns dict(frames, occluded_frames,
  covered: per region, the frames an occluder covers it in)."""
  video = media.probe_video(input_path)
  frames = list(media.read_frames(input_path))
  landmarker = face.FaceLandmarker()
  landmarks = [landmarker(frame) for frame in frames]
  occluded, coverage = occlude_clip(frames, landmarks, fraction, seed)
  writer = media.VideoWriter(output_path, video.fps, *frames[0].shape[:2])
  try:
    for frame in occluded:
      writer.write(frame)
    writer.close()
  except BaseException:
    writer.abort()
    raise
  covered = np.zeros(len(REGIONS), np.int64)
  for points, cover in zip(landmarks, coverage, strict=True):
    if points is not None and cover.any():
      covered += covered_regions(points, cover)
  return {
    'frames': len(frames),
    'occluded_frames': int((coverage.reshape(len(frames), -1).max(axis=1) > 0.5).sum()),
    'covered': {name: int(count) for name, count in zip(REGION_NAMES, covered, strict=True)},
  }
