"""Square face crops: the crop box of a face (or of a clip's faces), cropping, and landmarks in the
crop's normalised convention. Shared by data preparation and inference, so that a model sees the
same framing in both.

Boxes are (x0, y0, side) in integer frame pixels; a box may leave the frame (the crop is then
edge-padded). Landmarks in frame pixels are continuous coordinates (0 = left/top edge, pixel i's
centre at i + 0.5); normalised landmarks follow reenact_jax/geometry.py.
"""

import cv2
import numpy as np

from reenact_jax import face_topology, geometry

# The crop side is the face extent / FACE_FRACTION: 0.6 puts a still face at the scale of
# face_topology.canonical_landmarks() (hairline to chin over 60% of the crop).
FACE_FRACTION = 0.6


def crop_box(
  landmarks: np.ndarray, frame_height: int, frame_width: int, face_fraction: float = FACE_FRACTION
) -> tuple[int, int, int]:
  """One square box (x0, y0, side) in integer pixels bounding the face over a whole clip.

  Args:
    landmarks: (F, N, 3) per-frame landmarks in frame pixels (frames with a face).
    face_fraction: the longer side of the union of the face boxes over the crop side; a moving
      face looks smaller in each frame.

  The box is centred on the union of the face boxes and, when it fits, shifted to lie inside the
  frame (real pixels rather than padding); otherwise the crop is padded by edge replication.
  """
  low = landmarks[..., :2].min(axis=(0, 1))
  high = landmarks[..., :2].max(axis=(0, 1))
  center = (low + high) / 2
  side = int(round(float(max(high - low)) / face_fraction))
  side = max(side, 2)
  x0 = int(round(center[0] - side / 2))
  y0 = int(round(center[1] - side / 2))
  if side <= frame_width:
    x0 = min(max(x0, 0), frame_width - side)
  if side <= frame_height:
    y0 = min(max(y0, 0), frame_height - side)
  return x0, y0, side


def crop_frame(frame: np.ndarray, box: tuple[int, int, int], resolution: int) -> np.ndarray:
  """(resolution, resolution, C) crop of `box`, edge-padded where it leaves the frame."""
  x0, y0, side = box
  height, width = frame.shape[:2]
  pad = (max(0, -y0), max(0, y0 + side - height), max(0, -x0), max(0, x0 + side - width))
  region = frame[max(0, y0) : min(height, y0 + side), max(0, x0) : min(width, x0 + side)]
  if any(pad):
    region = cv2.copyMakeBorder(region, *pad, borderType=cv2.BORDER_REPLICATE)
  interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
  resized = cv2.resize(region, (resolution, resolution), interpolation=interpolation)
  return resized.reshape(resolution, resolution, *frame.shape[2:])


def normalise_landmarks(landmarks: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
  """(..., N, 3) frame-pixel landmarks -> the crop's normalised convention.

  x' = 2 (x - x0) / side - 1, y' likewise, z' = 2 z / side centred on the face (mean z' = 0).
  """
  x0, y0, side = box
  normalised = np.empty_like(landmarks, dtype=np.float32)
  normalised[..., 0] = 2 * (landmarks[..., 0] - x0) / side - 1
  normalised[..., 1] = 2 * (landmarks[..., 1] - y0) / side - 1
  z = 2 * landmarks[..., 2] / side
  normalised[..., 2] = z - z.mean(axis=-1, keepdims=True)
  return normalised


def face_width(landmarks: np.ndarray) -> float:
  """Width in pixels of the face (x extent of the landmarks, (N, 3) in frame pixels)."""
  return float(np.ptp(landmarks[:, 0]))


def mask_from_polygon(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
  """Filled face mask (H, W, 1) float32 {0, 1} from a (K, 2) polygon in normalised units.

  cv2.fillPoly rasterisation: every pixel whose centre is inside is filled, and so are pixels
  whose centre lies within about half a pixel outside an edge (cv2 includes the outline).
  """
  polygon = np.asarray(polygon, np.float64)
  # Normalised -> continuous pixels -> pixel-index units (centres at integers); fillPoly takes
  # fixed-point integer vertices, so keep 4 fractional bits.
  shift = 4
  x = ((polygon[:, 0] + 1) * (width / 2) - 0.5) * (1 << shift)
  y = ((polygon[:, 1] + 1) * (height / 2) - 0.5) * (1 << shift)
  vertices = np.round(np.stack([x, y], axis=-1)).astype(np.int32)
  mask = np.zeros((height, width), np.uint8)
  cv2.fillPoly(mask, [vertices], 1, lineType=cv2.LINE_8, shift=shift)
  return mask.astype(np.float32)[..., None]


def face_oval_mask(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
  """Filled face-oval polygon of `landmarks`.

  Args:
    landmarks: (N, 3) or (N, 2) normalised landmarks (MediaPipe topology).
    height, width: mask size, pixels.

  Returns:
    (height, width, 1) float32 mask in {0, 1}: pixels whose centres are inside the
    face_topology.FACE_OVAL polygon (mask_from_polygon, as for prepared data).
  """
  landmarks = np.asarray(landmarks)
  if landmarks.ndim != 2 or landmarks.shape[-1] not in (2, 3):
    raise ValueError(f'landmarks must have shape (N, 3) or (N, 2), got {landmarks.shape}.')
  return mask_from_polygon(landmarks[face_topology.FACE_OVAL, :2], height, width)


def preprocessing_spec() -> dict:
  """What an application must do to frames around the generator, as exported with it (spec.json
  'preprocessing'): the crop framing, the face mask's polygon, the landmarks whose similarity fit
  carries the head motion (relative motion), and the hole the paste-back covers. An artifact
  records it so that code with other preprocessing refuses it."""
  return {
    'crop_face_fraction': FACE_FRACTION,
    'face_mask_polygon': [int(index) for index in face_topology.FACE_OVAL],
    'stable_landmarks': [int(index) for index in face_topology.STABLE],
    'hole_dilation': geometry.HOLE_DILATION,
  }
