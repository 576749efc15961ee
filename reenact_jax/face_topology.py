"""MediaPipe face-mesh topology (478 points: 468 mesh points + 2 x 5 iris points) and assets.

Index lists are the facts of MediaPipe's face-mesh topology (its face_mesh_connections edge lists,
walked into ordered polygons). "Right" and "left" are the subject's: RIGHT_EYE (corners 33, 133)
appears on the image's left in an unmirrored photo. Iris blocks are (centre, 4 contour points).

The flip permutation and the canonical face come from running the face mesh on a real frontal
portrait and its mirror image (data/make_topology.py) and are stored in assets/face_topology.npz.
"""

import functools
import pathlib

import numpy as np
import scipy.spatial

NUM_LANDMARKS = 478
NUM_MESH_LANDMARKS = 468

_ASSET = pathlib.Path(__file__).parent / 'assets' / 'face_topology.npz'

# Ordered polygon of the face outline (forehead top, then down the image-right side).
FACE_OVAL = np.array(
  [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
  ]
)  # fmt: skip

# Lips as closed polygons: outer and inner contours from mouth corner 61/78 over the top.
LIPS_OUTER = np.array(
  [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
)
LIPS_INNER = np.array(
  [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]
)
# Each lip as a polygon: its outer contour then its inner contour back.
UPPER_LIP = np.array(
  [
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291,
    308, 415, 310, 311, 312, 13, 82, 81, 80, 191, 78,
  ]
)  # fmt: skip
LOWER_LIP = np.array(
  [
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291,
    308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78,
  ]
)  # fmt: skip

# Eye openings as closed polygons from the outer corner over the upper lid.
RIGHT_EYE = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7])
LEFT_EYE = np.array(
  [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249]
)
# Each eye's (outer, inner) corner, right eye first; the lids as pairs: UPPER_LIDS[i] lies above
# LOWER_LIDS[i] (both eyes, the corners left out), where a closed eye puts it.
EYE_CORNERS = ((33, 133), (263, 362))
UPPER_LIDS = np.concatenate([RIGHT_EYE[1:8], LEFT_EYE[1:8]])
LOWER_LIDS = np.concatenate([RIGHT_EYE[9:16][::-1], LEFT_EYE[9:16][::-1]])
RIGHT_EYEBROW = np.array([46, 53, 52, 65, 55, 70, 63, 105, 66, 107])
LEFT_EYEBROW = np.array([276, 283, 282, 295, 285, 300, 293, 334, 296, 336])

# Irises (refined topology): centre first, then the 4 contour points.
RIGHT_IRIS = np.arange(468, 473)
LEFT_IRIS = np.arange(473, 478)

NOSE = np.array(
  [1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327,
   344, 440]
)  # fmt: skip

# Points that move rigidly with the skull (no lids, brows, lips or jaw): for pose fits.
STABLE = np.array(
  [
    # forehead
    10, 151, 9, 108, 337, 109, 338, 67, 297, 69, 299,
    # nose bridge and tip
    168, 6, 197, 195, 5, 4, 1,
    # eye corners
    33, 133, 362, 263,
    # cheekbones
    116, 345, 123, 352, 117, 346, 50, 280,
    # temples
    127, 356, 162, 389, 21, 251, 54, 284,
  ]
)  # fmt: skip


@functools.cache
def _asset() -> dict[str, np.ndarray]:
  if not _ASSET.is_file():
    raise FileNotFoundError(
      f'{_ASSET} is missing: regenerate it with `python -m data.make_topology` (needs the face '
      'models from `make setup`).'
    )
  with np.load(_ASSET) as data:
    return {key: data[key] for key in data.files}


def flip_permutation() -> np.ndarray:
  """(478,) int: for a mirrored image, landmarks_flipped = landmarks[perm] with x negated."""
  return _asset()['flip_permutation'].astype(np.int64)


def canonical_landmarks() -> np.ndarray:
  """(478, 3) float32 frontal face in the normalised convention, mirror-symmetric.

  x, y in [-1, 1] over the frame (x right, y down), z on the scale of x growing away from the
  camera with mean 0; the face oval spans about 60% of the frame and is centred.
  """
  return _asset()['canonical'].astype(np.float32).copy()


def __getattr__(name: str):
  # FLIP_PERMUTATION is loaded lazily so that importing the module never needs the asset.
  if name == 'FLIP_PERMUTATION':
    return flip_permutation()
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# The eye meshes reach this far from each eye's centre, in eye widths (brows, upper cheek).
EYE_MESH_RADIUS = 1.2


@functools.cache
def eye_triangles() -> tuple[np.ndarray, np.ndarray]:
  """Landmark triangles around both eyes, for geometry.mesh_flow: (skin (K, 3), opening (L, 3))
  int32, counter-clockwise in the canonical face (x right, y down).

  Per eye, the Delaunay triangulation (of the canonical face, in the image plane) of every
  landmark within EYE_MESH_RADIUS eye widths of the eye's centre, split by the eye's opening:
  the skin (lids, brow, upper cheek) and the opening (the eyeball, with the iris). The skin
  never uses an iris point, so a closing lid covers the opening whatever the iris does; the
  opening's triangles move the iris with its own landmarks (gaze).
  """
  canonical = canonical_landmarks()[:, :2].astype(np.float64)
  skin, opening = [], []
  for eye, iris, corners in zip(
    (RIGHT_EYE, LEFT_EYE), (RIGHT_IRIS, LEFT_IRIS), EYE_CORNERS, strict=True
  ):
    near = _near(canonical, eye, corners, EYE_MESH_RADIUS)
    skin += _triangles(canonical, np.setdiff1d(near, iris), eye, keep_inside=False)
    opening += _triangles(canonical, np.union1d(eye, iris), eye, keep_inside=True)
  return np.asarray(skin, np.int32), np.asarray(opening, np.int32)


# The mouth's corners (the subject's right first) and how far its mesh reaches from the mouth's
# centre, in mouth widths (nasolabial folds, chin).
MOUTH_CORNERS = (61, 291)
MOUTH_MESH_RADIUS = 0.6


@functools.cache
def mouth_triangles() -> np.ndarray:
  """(K, 3) int32 landmark triangles of the skin around the mouth, lips included, for
  geometry.mesh_flow, counter-clockwise in the canonical face.

  The Delaunay triangulation of every mesh landmark within MOUTH_MESH_RADIUS mouth widths of
  the mouth's centre, less the opening (inside the inner lip contour; the canonical face's
  mouth is open, so no triangle spans it): lips that part leave the opening uncovered instead
  of stretching across it, and lips that close cover it.
  """
  canonical = canonical_landmarks()[:, :2].astype(np.float64)
  near = _near(canonical[:NUM_MESH_LANDMARKS], LIPS_OUTER, MOUTH_CORNERS, MOUTH_MESH_RADIUS)
  return np.asarray(_triangles(canonical, near, LIPS_INNER, keep_inside=False), np.int32)


@functools.cache
def surface_triangles(num_landmarks: int = NUM_LANDMARKS) -> np.ndarray:
  """(T, 3) int32 triangles over the first `num_landmarks` landmarks (the Delaunay
  triangulation of the canonical frontal face's x, y), each counter-clockwise in the canonical
  image: a surface whose triangles face the camera in a frontal view (geometry.facing)."""
  canonical = canonical_landmarks()[:num_landmarks, :2].astype(np.float64)
  points = np.arange(len(canonical))
  empty = np.zeros((0,), np.int64)  # No outline: every triangle is kept.
  return np.asarray(_triangles(canonical, points, empty, keep_inside=False), np.int32)


def _near(canonical: np.ndarray, polygon: np.ndarray, corners, radius: float) -> np.ndarray:
  """Indices of the `canonical` points within `radius` widths (the `corners`' distance) of
  `polygon`'s centre."""
  centre = canonical[polygon].mean(0)
  width = np.linalg.norm(canonical[corners[0]] - canonical[corners[1]])
  return np.flatnonzero(np.linalg.norm(canonical - centre, axis=1) < radius * width)


def _triangles(
  canonical: np.ndarray, points: np.ndarray, outline: np.ndarray, *, keep_inside: bool
) -> list[np.ndarray]:
  """The Delaunay triangles of `points` (indices into `canonical` (N, 2)) whose centroids lie
  inside (keep_inside) or outside the `outline` polygon, each counter-clockwise."""
  inside = _inside_polygon(canonical[outline])
  kept = []
  for triangle in points[scipy.spatial.Delaunay(canonical[points]).simplices]:
    a, b, c = canonical[triangle]
    if inside(((a + b + c) / 3)[None])[0] != keep_inside:
      continue
    area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    kept.append(triangle if area > 0 else triangle[[0, 2, 1]])
  return kept


def _inside_polygon(polygon: np.ndarray):
  """A point-in-polygon test (even-odd rule) for `polygon` (P, 2): (M, 2) points -> (M,) bool."""

  def inside(points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    at = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1.0, y1 - y0)
    return np.sum(crosses & (x < at), axis=1) % 2 == 1

  return inside


# The eye landmarks whose neighbourhood the eye meshes take over from the volume's flow.
EYE_POINTS = np.concatenate([RIGHT_EYE, LEFT_EYE, RIGHT_IRIS, LEFT_IRIS])
# The lip landmarks whose neighbourhood the mouth mesh takes over.
MOUTH_POINTS = np.concatenate([LIPS_OUTER, LIPS_INNER])
