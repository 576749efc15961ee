"""Face detection and 478-point face mesh with the MediaPipe TFLite models under ai-edge-litert.

Three models from the mediapipe wheel, extracted by `make setup` (data/mediapipe_models.py) into
`<sys.prefix>/share/reenact_jax/mediapipe` or $REENACT_JAX_MODELS (`model_dir`):
- `face_detection_short_range.tflite` (BlazeFace): 128x128 RGB in [-1, 1], 896 SSD anchors x 16
  regressors (box centre/size + 6 keypoints) and 896 score logits.
- `face_landmark.tflite`: a 192x192 RGB crop in [0, 1] around the face (rotated so the eyes are
  level, 1.5x the face box), 468 points (x, y, z) in crop pixels and a face-presence logit.
- `iris_landmark.tflite`: a 64x64 RGB eye crop in [0, 1] (2.3x the eye-corner distance; the
  image-right eye mirrored), 71 eye-contour points and 5 iris points (centre first).
The refined 478-point topology is the 468 mesh points followed by the iris of the eye with
corners 33/133 (468..472) and the iris of the eye with corners 362/263 (473..477).

Coordinates here are continuous pixel coordinates of the input frame (0 = left/top edge, pixel
i's centre at i + 0.5); z is in pixels too, on the scale of x, growing away from the camera.
"""

import dataclasses
import math
import os
import pathlib
import sys

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

ENV_VAR = 'REENACT_JAX_MODELS'
# The files the face models run (the wheel's attention mesh needs custom ops that ai-edge-litert
# does not ship, so the 478-point mesh is face_landmark + iris_landmark).
REQUIRED_FILES = (
  'face_detection_short_range.tflite',
  'face_landmark.tflite',
  'iris_landmark.tflite',
)

NUM_MESH_LANDMARKS = 468
NUM_LANDMARKS = 478

DETECTOR_SIZE = 128
MESH_SIZE = 192
IRIS_SIZE = 64
MESH_SCALE = 1.5
IRIS_SCALE = 2.3

# Mesh indices of the eye corners used to level the face crop and to place the eye crops.
_RIGHT_EYE_OUTER, _RIGHT_EYE_INNER = 33, 133  # the subject's right eye (image left)
_LEFT_EYE_INNER, _LEFT_EYE_OUTER = 362, 263  # the subject's left eye (image right)


@dataclasses.dataclass(frozen=True)
class RotatedRect:
  """A square-or-not region of a frame: centre (px), size (px) and angle (radians).

  The angle is the direction of the region's x axis in the frame (y down), so a face whose eye
  line runs at angle a gets a crop with angle a and appears level inside it.
  """

  center_x: float
  center_y: float
  width: float
  height: float
  angle: float = 0.0

  def crop_to_frame(self, size: int) -> np.ndarray:
    """(2, 3) affine mapping continuous crop pixels of a `size` x `size` crop to frame pixels."""
    cos, sin = math.cos(self.angle), math.sin(self.angle)
    scale_x, scale_y = self.width / size, self.height / size
    linear = np.array([[cos * scale_x, -sin * scale_y], [sin * scale_x, cos * scale_y]])
    offset = np.array([self.center_x, self.center_y]) - linear @ np.array([size / 2, size / 2])
    return np.concatenate([linear, offset[:, None]], axis=1)


def crop(image: np.ndarray, rect: RotatedRect, size: int, border=cv2.BORDER_REPLICATE):
  """Resamples `rect` of `image` (H, W, C) to (size, size, C) bilinearly."""
  affine = rect.crop_to_frame(size)
  # cv2 indexes pixel centres at integers: shift from continuous coordinates on both sides.
  index_affine = affine.copy()
  index_affine[:, 2] += affine[:, :2] @ np.array([0.5, 0.5]) - 0.5
  return cv2.warpAffine(
    image,
    index_affine,
    (size, size),
    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
    borderMode=border,
  )


def _to_frame(points: np.ndarray, rect: RotatedRect, size: int) -> np.ndarray:
  """Maps (N, 3) crop-pixel points of a `size` crop to frame pixels (z scaled like x)."""
  affine = rect.crop_to_frame(size)
  xy = points[:, :2] @ affine[:, :2].T + affine[:, 2]
  z = points[:, 2:3] * (rect.width / size)
  return np.concatenate([xy, z], axis=1)


def default_model_dir() -> pathlib.Path:
  """Where `make setup` puts the models: `<sys.prefix>/share/reenact_jax/mediapipe`."""
  return pathlib.Path(sys.prefix) / 'share' / 'reenact_jax' / 'mediapipe'


def model_dir() -> pathlib.Path:
  """The folder holding the extracted `.tflite` models ($REENACT_JAX_MODELS or the default).

  Raises:
    FileNotFoundError: naming the folder, the missing files and the command that fixes it.
  """
  from_env = os.environ.get(ENV_VAR)
  folder = pathlib.Path(from_env) if from_env else default_model_dir()
  missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
  if missing:
    origin = f'${ENV_VAR}' if from_env else 'the default location'
    raise FileNotFoundError(
      f'Face models not found in {folder} ({origin}): missing {", ".join(missing)}. '
      f'Run `make setup` (or `python -m data.mediapipe_models --output {folder}`) once with '
      f'access to the package registry, or set ${ENV_VAR} to a folder that holds them.'
    )
  return folder


def _interpreter(name: str):
  interpreter = Interpreter(model_path=str(model_dir() / name), num_threads=1)
  interpreter.allocate_tensors()
  return interpreter


def _ssd_anchor_centers() -> np.ndarray:
  """(896, 2) anchor centres in [0, 1] of the short-range BlazeFace model.

  Layers with strides 8, 16, 16, 16 and two anchors per layer per cell; consecutive layers with
  the same stride share one grid, so a 16x16 grid holds 2 anchors per cell and an 8x8 grid 6.
  All anchors have unit size (fixed_anchor_size), so only their centres matter.
  """
  centers = []
  for stride, anchors_per_cell in ((8, 2), (16, 6)):
    cells = DETECTOR_SIZE // stride
    for row in range(cells):
      for col in range(cells):
        centers += [((col + 0.5) / cells, (row + 0.5) / cells)] * anchors_per_cell
  return np.asarray(centers, np.float32)


@dataclasses.dataclass(frozen=True)
class Detection:
  """A face found by the detector, in frame pixels."""

  score: float
  box: np.ndarray  # (4,) x0, y0, x1, y1
  keypoints: np.ndarray  # (6, 2) right eye, left eye, nose tip, mouth, right ear, left ear


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[2], boxes[:, 2])
  y1 = np.minimum(box[3], boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


class FaceDetector:
  """BlazeFace short-range detector on a letterboxed 128x128 copy of the frame."""

  def __init__(self, min_score: float = 0.5, nms_threshold: float = 0.3):
    self._interpreter = _interpreter('face_detection_short_range.tflite')
    self._input = self._interpreter.get_input_details()[0]['index']
    outputs = {d['name']: d['index'] for d in self._interpreter.get_output_details()}
    self._regressors = outputs['regressors']
    self._scores = outputs['classificators']
    self._anchors = _ssd_anchor_centers()
    self.min_score = min_score
    self.nms_threshold = nms_threshold

  def __call__(self, image: np.ndarray) -> list[Detection]:
    """Faces in an RGB uint8 frame (H, W, 3), best first."""
    height, width = image.shape[:2]
    side = float(max(height, width))
    rect = RotatedRect(width / 2, height / 2, side, side)
    tensor = crop(image, rect, DETECTOR_SIZE, border=cv2.BORDER_CONSTANT)
    tensor = tensor.astype(np.float32) * (2.0 / 255.0) - 1.0
    self._interpreter.set_tensor(self._input, tensor[None])
    self._interpreter.invoke()
    raw = self._interpreter.get_tensor(self._regressors)[0] / DETECTOR_SIZE  # (896, 16)
    logits = np.clip(
      self._interpreter.get_tensor(self._scores)[0, :, 0].astype(np.float64), -80, 80
    )
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = scores >= self.min_score
    if not keep.any():
      return []
    raw, scores, anchors = raw[keep], scores[keep], self._anchors[keep]
    centers = raw[:, 0:2] + anchors
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centers - half, centers + half], axis=1)  # in [0, 1] of the tensor
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
    detections = self._weighted_nms(scores, boxes, keypoints)
    # Tensor [0, 1] -> frame pixels: the letterbox is `rect` (axis-aligned square).
    to_frame = lambda p: (p - 0.5) * side + np.array([width / 2, height / 2])
    return [
      Detection(float(s), to_frame(b.reshape(2, 2)).reshape(4), to_frame(k))
      for s, b, k in detections
    ]

  def _weighted_nms(self, scores, boxes, keypoints):
    """Blends overlapping candidates by score (BlazeFace's weighted non-maximum suppression)."""
    order = np.argsort(-scores)
    scores, boxes, keypoints = scores[order], boxes[order], keypoints[order]
    remaining = np.ones(len(scores), bool)
    results = []
    for i in range(len(scores)):
      if not remaining[i]:
        continue
      group = remaining & (_iou(boxes[i], boxes) > self.nms_threshold)
      group[i] = True
      weights = scores[group] / scores[group].sum()
      results.append(
        (
          float(scores[i]),
          (boxes[group] * weights[:, None]).sum(0),
          (keypoints[group] * weights[:, None, None]).sum(0),
        )
      )
      remaining &= ~group
    return results


def _eye_line_rect(p0: np.ndarray, p1: np.ndarray, points: np.ndarray, scale: float):
  """A square RotatedRect levelled along p0 -> p1, bounding `points` (N, 2) times `scale`."""
  angle = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
  cos, sin = math.cos(angle), math.sin(angle)
  # Coordinates in the levelled frame, to bound the points tightly whatever the head roll.
  local = points @ np.array([[cos, -sin], [sin, cos]])
  low, high = local.min(0), local.max(0)
  center_local = (low + high) / 2
  center = np.array([[cos, -sin], [sin, cos]]) @ center_local
  side = float(max(high - low)) * scale
  return RotatedRect(float(center[0]), float(center[1]), side, side, angle)


def rect_from_detection(detection: Detection) -> RotatedRect:
  """The face-mesh crop for a detection: levelled on the eyes, 1.5x the box, square."""
  box = detection.box
  corners = np.array([[box[0], box[1]], [box[2], box[3]]])
  return _eye_line_rect(detection.keypoints[0], detection.keypoints[1], corners, MESH_SCALE)


def rect_from_landmarks(landmarks: np.ndarray) -> RotatedRect:
  """The face-mesh crop that tracks the face from the previous frame's (N, 3) landmarks."""
  points = landmarks[:NUM_MESH_LANDMARKS, :2]
  return _eye_line_rect(points[_RIGHT_EYE_OUTER], points[_LEFT_EYE_OUTER], points, MESH_SCALE)


class FaceMesh:
  """The 468-point face mesh plus the iris model: 478 landmarks in frame pixels."""

  def __init__(self, with_iris: bool = True):
    self._mesh = _interpreter('face_landmark.tflite')
    self._mesh_input = self._mesh.get_input_details()[0]['index']
    outputs = {d['name']: d['index'] for d in self._mesh.get_output_details()}
    self._mesh_points = outputs['conv2d_21']
    self._mesh_score = outputs['conv2d_31']
    self.with_iris = with_iris
    if with_iris:
      self._iris = _interpreter('iris_landmark.tflite')
      self._iris_input = self._iris.get_input_details()[0]['index']
      outputs = {d['name']: d['index'] for d in self._iris.get_output_details()}
      self._iris_points = outputs['output_iris']

  @property
  def num_landmarks(self) -> int:
    return NUM_LANDMARKS if self.with_iris else NUM_MESH_LANDMARKS

  def __call__(self, image: np.ndarray, rect: RotatedRect) -> tuple[np.ndarray, float]:
    """Landmarks (N, 3) in frame pixels and the face-presence probability for one crop."""
    tensor = crop(image, rect, MESH_SIZE).astype(np.float32) * (1.0 / 255.0)
    self._mesh.set_tensor(self._mesh_input, tensor[None])
    self._mesh.invoke()
    points = self._mesh.get_tensor(self._mesh_points).reshape(NUM_MESH_LANDMARKS, 3)
    logit = float(self._mesh.get_tensor(self._mesh_score).reshape(()))
    presence = 1.0 / (1.0 + math.exp(-max(min(logit, 60.0), -60.0)))
    landmarks = _to_frame(points.astype(np.float64), rect, MESH_SIZE)
    if self.with_iris:
      right = self._iris_landmarks(image, landmarks, _RIGHT_EYE_OUTER, _RIGHT_EYE_INNER, False)
      left = self._iris_landmarks(image, landmarks, _LEFT_EYE_INNER, _LEFT_EYE_OUTER, True)
      landmarks = np.concatenate([landmarks, right, left], axis=0)
    return landmarks.astype(np.float32), presence

  def _iris_landmarks(self, image, landmarks, corner0, corner1, mirror: bool) -> np.ndarray:
    """(5, 3) iris centre and contour of one eye, in frame pixels."""
    p0, p1 = landmarks[corner0, :2], landmarks[corner1, :2]
    rect = _eye_line_rect(p0, p1, np.stack([p0, p1]), IRIS_SCALE)
    eye = crop(image, rect, IRIS_SIZE)
    # The model was trained on image-left eyes: mirror the other one in and its points out.
    if mirror:
      eye = eye[:, ::-1]
    self._iris.set_tensor(self._iris_input, (eye.astype(np.float32) * (1.0 / 255.0))[None])
    self._iris.invoke()
    iris = self._iris.get_tensor(self._iris_points).reshape(5, 3).astype(np.float64)
    if mirror:
      iris[:, 0] = IRIS_SIZE - iris[:, 0]
    iris = _to_frame(iris, rect, IRIS_SIZE)
    # Iris depth is relative to the eye: put it at the depth of the eye corners.
    iris[:, 2] += (landmarks[corner0, 2] + landmarks[corner1, 2]) / 2
    return iris


class FaceLandmarker:
  """Detect-then-track 478-point landmarks on a sequence of frames (one clip).

  The first frame (and any frame where tracking loses the face) runs the detector; the other
  frames crop around the previous frame's landmarks, as MediaPipe's face mesh graph does.
  """

  def __init__(self, min_presence: float = 0.5, with_iris: bool = True):
    self.detector = FaceDetector()
    self.mesh = FaceMesh(with_iris=with_iris)
    self.min_presence = min_presence
    self._previous: np.ndarray | None = None

  @property
  def num_landmarks(self) -> int:
    return self.mesh.num_landmarks

  def reset(self) -> None:
    """Forgets the tracked face (call between clips)."""
    self._previous = None

  def detect_rect(self, image: np.ndarray) -> RotatedRect | None:
    detections = self.detector(image)
    return rect_from_detection(detections[0]) if detections else None

  def __call__(self, image: np.ndarray) -> np.ndarray | None:
    """(N, 3) landmarks in frame pixels for an RGB uint8 frame, or None when no face."""
    if self._previous is not None:
      landmarks, presence = self.mesh(image, rect_from_landmarks(self._previous))
      if presence >= self.min_presence:
        self._previous = landmarks
        return landmarks
    self._previous = None
    rect = self.detect_rect(image)
    if rect is None:
      return None
    landmarks, presence = self.mesh(image, rect)
    if presence < self.min_presence:
      return None
    # A second pass from the mesh's own box is better centred than the detector's box.
    refined, refined_presence = self.mesh(image, rect_from_landmarks(landmarks))
    if refined_presence >= self.min_presence:
      landmarks = refined
    self._previous = landmarks
    return landmarks
