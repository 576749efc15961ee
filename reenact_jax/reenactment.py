"""Reenactment of a portrait with the head motion and expressions of a driving video.

The command is `python -m reenact_jax.reenact`; this module is its library (also used by the
demo, the jobs runner and the web page). The newest checkpoint in a run directory (or a given
step) is loaded with its EMA weights and its own config (image size, landmark count), or an
exported artifact (load_export: jax, numpy and the face models, no flax or training code). The
source face and every driving frame are
cropped and given landmarks, and the source gets its person matte, exactly as data preparation
does (reenact_jax/preparation.py): the source gets one crop box, each shot of the driving clip
one stable box.

Source: an image, or a video (its `source_frame`, by default its most frontal frame). A small
face (a group photo, a half-body shot) is found by the full-range detector and its crop is
upscaled; the summary says so.

Driving clip: one person is followed (the `driving_face`-th largest face of the first frame, then
the face nearest to where it was); cuts between shots are detected from colour histograms, the
face is detected afresh after each and the crop box and relative motion are re-anchored per
shot. Frames without a face take the nearest frame's landmarks (the summary counts them). The
landmarks are smoothed in time (One Euro filter forward and backward: no lag; `smoothing`; 0
turns it off).

Motion:
  relative   the source landmarks moved by the driving motion since a reference frame of the
             shot (its first frame with a face, or with `find_best_frame` the one whose
             expression is closest to the source's): head pose change as a similarity of the
             stable landmarks, plus the expression residual. Keeps the source's face shape.
  absolute   the driving landmarks as they are, in the driving crop's frame: the face takes the
             driving face's place, size and shape (right for the same person).
  auto       relative, unless the source is a frame of the driving clip itself. (Without an
             identity model the code cannot tell two people apart; a different person is the
             common case, and absolute motion would paste the driver's face shape on them.)

Output: an H.264 video at the driving clip's frame rate, with the driving clip's audio;
`paste_back` blends the result into the full-resolution source, `side_by_side` also writes
source | driving | result crops; `report` measures how well the output follows the driving clip
(`motion_report`) and writes <output stem>_report.json. `prior_only` renders with the geometric
prior alone (models.prior_render: the run's sizes, none of its weights): the baseline a trained
model must beat.

A bad input (no face, unreadable video, missing checkpoint, unwritable output, image too large)
raises ReenactError, whose message names the input and what to do.
"""

import dataclasses
import json
import logging
import math
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np
from tqdm import tqdm

from reenact_jax import (
  crops,
  exported,
  face,
  face_topology,
  geometry,
  media,
  metrics,
  motion,
  occlusion,
)

DEFAULT_BATCH_SIZE = 8
MOTIONS = ('auto', 'relative', 'absolute')
# Frames kept decoded between the tracking pass and the rendering pass; longer clips are
# decoded twice instead.
FRAME_CACHE_BYTES = 768 * 2**20
# Paste-back blend mask, as fractions of the crop side: the source person and the rendered
# person grown by DILATION, softened by FEATHER, faded to 0 over EDGE_FADE at the crop border so
# the crop's edges never show.
PASTE_DILATION = 0.03
PASTE_FEATHER = 0.02
PASTE_EDGE_FADE = 0.06
SIDE_BY_SIDE_SUFFIX = '_side_by_side'
REPORT_SUFFIX = '_report.json'


class ReenactError(ValueError):
  """A bad input: the message names the input and what to do."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How to reenact (see the module docstring)."""

  motion: str = 'auto'
  find_best_frame: bool = False
  smoothing: float = 1.0
  fill_occluded: bool = True
  paste_back: bool = False
  side_by_side: bool = False
  source_frame: int | None = None
  source_views: int = 1  # With a video source: this many of its frames as views (read_source).
  driving_face: int = 0
  prior_only: bool = False
  report: bool = False
  report_against: str = ''
  identity_weights: str = ''
  audio: bool = True
  batch_size: int = DEFAULT_BATCH_SIZE
  step: int | None = None


# ------------------------------------------------------------------------------- models


class Renderer(Protocol):
  """What turns generator inputs into frames: inference.CheckpointRenderer (a run's generator or
  its prior alone) or ExportRenderer (an exported artifact)."""

  prior_only: bool

  @property
  def image_size(self) -> int: ...

  @property
  def num_landmarks(self) -> int: ...

  @property
  def step(self) -> int: ...

  def render(self, inputs: dict) -> dict:
    """models.INPUT_NAMES (numpy arrays) -> outputs ('output', 'alpha', ...)."""
    ...


def load(workdir: str | os.PathLike, step: int | None = None, *, prior_only: bool = False):
  """The run's EMA generator (or, prior_only, its geometric prior), errors as ReenactError."""
  # Imported here: flax and the models are needed for a checkpoint only; reenacting from an
  # export (load_export) runs on jax, numpy and the face models alone.
  from reenact_jax import inference

  try:
    loaded = inference.load_generator(str(workdir), step)
  except inference.CheckpointNotFoundError as error:
    raise ReenactError(f'--workdir: {error}') from error
  except Exception as error:  # orbax/flax raise many types on a checkpoint of another layout.
    raise ReenactError(
      f'--workdir {workdir}: cannot load the checkpoint ({type(error).__name__}: '
      f'{str(error)[:500]}). It was probably written by an incompatible version of '
      'reenact_jax; retrain or use the matching code version.'
    ) from error
  _check_landmark_count(loaded.config.model.num_landmarks, f'--workdir {workdir}: the checkpoint')
  return inference.CheckpointRenderer(
    loaded.config, loaded.generator, loaded.params, loaded.step, prior_only
  )


def _check_landmark_count(num_landmarks: int, what: str) -> None:
  if int(num_landmarks) not in (468, 478):
    raise ReenactError(
      f'{what} expects {num_landmarks} landmarks per face; the face mesh gives 478 (or 468 '
      'without irises). It is not a face-mesh model.'
    )


def open_renderer(
  workdir: str | os.PathLike | None, export: str | os.PathLike | None, options: Options
) -> Renderer:
  """The renderer the command line asks for: `export`'s artifact, or `workdir`'s checkpoint
  (options.step, options.prior_only)."""
  if export:
    if options.prior_only:
      raise ReenactError(
        "--prior_only renders with no weights from a run's sizes: use it with --workdir."
      )
    if options.step is not None:
      raise ReenactError('--step chooses a checkpoint of --workdir; an --export holds one step.')
    return load_export(export)
  return load(workdir, options.step, prior_only=options.prior_only)


@dataclasses.dataclass
class ExportRenderer:
  """An exported generator (reenact_jax/exported.py) as a Renderer."""

  generator: exported.ExportedGenerator
  prior_only = False

  @property
  def image_size(self) -> int:
    return self.generator.image_size

  @property
  def num_landmarks(self) -> int:
    return self.generator.num_landmarks

  @property
  def step(self) -> int:
    return self.generator.step

  def render(self, inputs: dict) -> dict:
    return self.generator(*(inputs[name] for name in exported.INPUT_NAMES))


def load_export(path: str | os.PathLike) -> ExportRenderer:
  """The artifact written by `python -m reenact_jax.export`, errors as ReenactError.

  The artifact's preprocessing (spec.json 'preprocessing': crop framing, face-mask polygon,
  landmarks of the rigid fit, hole size) must be the one this code applies to the frames
  (crops.preprocessing_spec); an artifact made for another one is refused, not run on
  inputs it was not trained on.
  """
  try:
    generator = exported.load(path)
  except exported.ArtifactError as error:
    raise ReenactError(f'--export: {error}') from error
  expected = crops.preprocessing_spec()
  found = generator.spec.get('preprocessing')
  if found != expected:
    found = found if isinstance(found, dict) else {}
    differing = sorted(
      key for key in set(expected) | set(found) if found.get(key) != expected.get(key)
    )
    raise ReenactError(
      f'--export {path}: the artifact was made for other face preprocessing than this version '
      f'of reenact_jax applies (differs in: {", ".join(differing)}). Re-export it with this '
      f'version: python -m reenact_jax.export --workdir=RUN_DIR --output={path}'
    )
  _check_landmark_count(generator.num_landmarks, f'--export {path}: the artifact')
  return ExportRenderer(generator)


def _quiet(factory):
  """factory() without the TFLite runtime's banner on stderr (it would precede every error
  message; fd 2 is silenced only while the interpreters are created)."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        return factory()
      finally:
        os.dup2(saved, 2)
  finally:
    os.close(saved)


# ------------------------------------------------------------------------------- source


@dataclasses.dataclass(frozen=True)
class SourceFace:
  """The source portrait, its crop and what the generator needs of it."""

  image: np.ndarray  # (H0, W0, 3) uint8, the full-resolution portrait.
  box: tuple[int, int, int]  # x0, y0, side in portrait pixels.
  crop: np.ndarray  # (S, S, 3) float32 in [0, 1].
  landmarks: np.ndarray  # (N, 3) float32, normalised over the crop.
  mask: np.ndarray  # (S, S, 1) float32 {0, 1}, the face-oval polygon.
  matte: np.ndarray  # (S, S, 1) float32 [0, 1], the person matte of the crop.
  face_pixels: float  # Width of the face in the portrait, pixels.


def prepare_source(
  image: np.ndarray,
  pixel_landmarks: np.ndarray,
  image_size: int,
  num_landmarks: int,
  segmenter: face.PersonSegmenter,
) -> SourceFace:
  """Crops the portrait around its face as preparation crops a (one-frame) clip.

  Args:
    image: (H0, W0, 3) uint8. pixel_landmarks: (478, 3) in frame pixels (FaceLandmarker).
    image_size: the crop side S in pixels (config.image_size).
    num_landmarks: config.model.num_landmarks (478, or 468 without the irises).
    segmenter: the person-matte model, run on the crop.
  """
  height, width = image.shape[:2]
  box = crops.crop_box(pixel_landmarks[None], height, width)
  crop = crops.crop_frame(image, box, image_size)
  landmarks = crops.normalise_landmarks(pixel_landmarks[:num_landmarks], box)
  return SourceFace(
    image=image,
    box=box,
    crop=crop.astype(np.float32) / 255.0,
    landmarks=landmarks,
    mask=crops.face_oval_mask(landmarks, image_size, image_size),
    matte=segmenter(crop)[..., None],
    face_pixels=crops.face_width(pixel_landmarks),
  )


def read_source(
  path: str | os.PathLike,
  landmarker: face.FaceLandmarker,
  source_frame: int | None,
  views: int = 1,
) -> list[tuple[np.ndarray, np.ndarray, str]]:
  """[(image, its landmarks in pixels, a description)] of the source: an image, or `views`
  frames of a video (the first: `source_frame`, or the most frontal frame with a face; the
  others: the frames of the most different head poses, metrics.most_different_poses)."""
  path = pathlib.Path(path)
  if not media.is_video(path):
    if views > 1:
      raise ReenactError(
        f'--source_views={views} samples views from a video --source; {path} is an image '
        '(give more images with more --source flags).'
      )
    image = _checked('--source', media.read_image, path)
    landmarker.reset()
    points = landmarker(image)
    if points is None:
      raise ReenactError(
        f'--source {path}: no face found. Use a portrait with one clearly visible, roughly '
        'frontal face (at least ~30 pixels across).'
      )
    return [(image, points, str(path))]
  _checked('--source', media.probe_video, path)
  landmarker.reset()
  canonical = face_topology.canonical_landmarks()
  found = {}  # frame index -> (pose, landmarks in pixels)
  try:
    for index, frame in enumerate(media.read_frames(path)):
      if views == 1 and source_frame is not None and index != source_frame:
        continue
      points = landmarker(frame)
      if points is None:
        continue
      side = max(frame.shape[:2])
      normalised = crops.normalise_landmarks(points, (0, 0, side))[None]
      found[index] = (
        metrics.head_pose_angles(normalised, canonical, face_topology.STABLE)[0],
        points,
      )
      if views == 1 and source_frame is not None:
        break
    if source_frame is not None and source_frame not in found:
      raise ReenactError(
        f'--source {path}: no face found in frame {source_frame}. Choose another --source_frame '
        'or video.'
      )
    if not found:
      raise ReenactError(f'--source {path}: no face found in any frame. Choose another video.')
    indices = sorted(found)
    poses = np.stack([found[index][0] for index in indices])
    if source_frame is None:
      first = int(np.argmin(poses[:, 0] ** 2 + poses[:, 1] ** 2))  # The most frontal.
    else:
      first = indices.index(source_frame)
    chosen = [indices[i] for i in [first, *metrics.most_different_poses(poses, first, views - 1)]]
    if len(chosen) < views:
      logging.warning(
        '--source %s: %d frames with a face, fewer than --source_views=%d; using them all.',
        path,
        len(chosen),
        views,
      )
    frames = {}  # The chosen frames, decoded again (the first pass keeps landmarks only).
    for index, frame in enumerate(media.read_frames(path)):
      if index in chosen:
        frames[index] = frame
      if len(frames) == len(chosen):
        break
  except media.UnreadableInput as error:
    raise ReenactError(f'--source {path}: {error}.') from error
  if len(frames) < len(chosen):
    missing = sorted(set(chosen) - set(frames))
    raise ReenactError(f'--source {path}: frames {missing} could not be read again.')
  return [(frames[index], found[index][1], f'{path} frame {index}') for index in chosen]


# ------------------------------------------------------------------------------ driving


@dataclasses.dataclass(frozen=True)
class DrivingTrack:
  """Pass 1 over the driving clip: per-frame landmarks, shots and their crop boxes."""

  path: pathlib.Path
  landmarks: np.ndarray  # (F, N, 3) float32, normalised over each frame's box; gaps filled.
  has_face: np.ndarray  # (F,) bool, False where the landmarks are the nearest found frame's.
  # (F, R) bool: the face regions (occlusion.REGIONS) an occluder covers (all False without a face).
  occluded: np.ndarray
  shots: list[tuple[int, int]]  # [begin, end) of each shot.
  boxes: list[tuple[int, int, int]]  # One crop box per shot (x0, y0, side in frame pixels).
  frames: list[np.ndarray] | None  # The decoded frames when they fit in memory, else None.

  @property
  def num_frames(self) -> int:
    return len(self.has_face)

  def box_of(self, frame: int) -> tuple[int, int, int]:
    for (begin, end), box in zip(self.shots, self.boxes, strict=True):
      if begin <= frame < end:
        return box
    raise IndexError(frame)


def _fill_gaps(found: list[np.ndarray | None]) -> np.ndarray:
  """(F, N, 3): frames without a face take the landmarks of the nearest frame with one."""
  kept = np.array([i for i, points in enumerate(found) if points is not None])
  nearest = kept[np.abs(np.arange(len(found))[:, None] - kept[None]).argmin(axis=1)]
  return np.stack([found[i] for i in nearest])


def track_driving(
  path: str | os.PathLike, landmarker: face.FaceLandmarker, num_landmarks: int, *, progress=True
) -> DrivingTrack:
  """Follows one face over the driving clip, finds its cuts and each shot's crop box."""
  path = pathlib.Path(path)
  landmarker.reset()
  found, signatures, cached, cached_bytes, frame_shape = [], [], [], 0, None
  aligned: list[np.ndarray | None] = []  # Each frame's aligned face (occlusion.aligned_face).
  try:
    for frame in _progress(media.read_frames(path), progress, 'Tracking the driving face'):
      frame_shape = frame.shape
      signatures.append(media.frame_signature(frame))
      if len(signatures) > 1:
        if motion.signature_distance(signatures[-1], signatures[-2]) > motion.CUT_THRESHOLD:
          landmarker.new_shot()  # A cut: detect again rather than track into the new shot.
      found.append(landmarker(frame))
      aligned.append(None if found[-1] is None else occlusion.aligned_face(frame, found[-1]))
      if cached is not None:
        cached.append(frame)
        cached_bytes += frame.nbytes
        if cached_bytes > FRAME_CACHE_BYTES:
          cached = None  # A long clip is decoded a second time instead.
  except media.UnreadableInput as error:
    raise ReenactError(f'--driving {path}: {error}. Re-encode or choose another video.') from error
  if not found:
    raise ReenactError(f'--driving {path} holds no frames.')
  has_face = np.array([points is not None for points in found])
  if not has_face.any():
    raise ReenactError(
      f'--driving {path}: no face found in any of its {len(found)} frames. Use a clip that shows '
      'one face, frontal enough and large enough (at least ~30 pixels across).'
    )
  shots = motion.shots_of(motion.shot_starts(np.stack(signatures)), len(found))
  occluded = np.zeros((len(found), len(occlusion.REGIONS)), bool)
  for begin, end in shots:
    with_face = begin + np.flatnonzero(has_face[begin:end])
    if len(with_face):
      faces = np.stack([aligned[i] for i in with_face])
      occluded[with_face] = ~occlusion.region_visibility(faces)
  pixels = _fill_gaps(found)
  landmarks = np.empty((len(found), num_landmarks, 3), np.float32)
  boxes = []
  for begin, end in shots:
    with_face = begin + np.flatnonzero(has_face[begin:end])
    reference = pixels[with_face] if len(with_face) else pixels[begin:end]
    box = crops.crop_box(reference, frame_shape[0], frame_shape[1])
    boxes.append(box)
    landmarks[begin:end] = crops.normalise_landmarks(pixels[begin:end, :num_landmarks], box)
  return DrivingTrack(path, landmarks, has_face, occluded, shots, boxes, cached)


def track_key(driving_path: str | os.PathLike, driving_face: int) -> tuple[str, int]:
  """What identifies a tracked driving clip: its resolved path and the face followed."""
  return (str(pathlib.Path(driving_path).resolve()), int(driving_face))


def _driving_frames(track: DrivingTrack) -> Iterator[np.ndarray]:
  if track.frames is not None:
    yield from track.frames
    return
  try:
    yield from media.read_frames(track.path)
  except media.UnreadableInput as error:
    raise ReenactError(f'--driving {track.path} on the second read: {error}') from error


def driving_motion(
  source: np.ndarray, track: DrivingTrack, options: Options, fps: float, relative: bool
) -> tuple[np.ndarray, list[int]]:
  """The driving landmarks (F, N, 3) the generator is given, and the reference frame of each
  shot (relative motion; empty for absolute). With options.fill_occluded the landmarks of the
  face regions an occluder covers are filled in first (occlusion.fill_occluded)."""
  landmarks = track.landmarks
  if options.fill_occluded and track.occluded.any():
    landmarks = landmarks.copy()
    for begin, end in track.shots:
      with_face = begin + np.flatnonzero(track.has_face[begin:end])
      landmarks[with_face] = occlusion.fill_occluded(
        landmarks[with_face], ~track.occluded[with_face]
      )
      # The frames without a face (a hand can hide it) take the filled landmarks of the
      # nearest frame of the shot with one, not the shape the occluder gave it.
      without = begin + np.flatnonzero(~track.has_face[begin:end])
      if len(with_face) and len(without):
        nearest = with_face[np.abs(without[:, None] - with_face[None]).argmin(axis=1)]
        landmarks[without] = landmarks[nearest]
  smoothed = motion.smooth_landmarks(landmarks, fps, options.smoothing, track.shots)
  if not relative:
    return smoothed, []
  out = np.empty_like(smoothed)
  references = []
  for begin, end in track.shots:
    has_face = track.has_face[begin:end]
    if not has_face.any():  # A shot without a face holds the previous shot's last pose.
      out[begin:end] = out[begin - 1] if begin else source
      continue
    reference = motion.reference_frame(
      source, smoothed[begin:end], has_face, options.find_best_frame
    )
    references.append(begin + reference)
    out[begin:end] = motion.relative_landmarks(source, smoothed[begin:end], reference)
  return out, references


# ---------------------------------------------------------------------------- paste back


def paste_mask(source_matte: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """(S, S) float32 in [0, 1]: where the result replaces the source when pasted back.

  The union of the source person (where the background was refilled) and the rendered person,
  grown, feathered, and faded to 0 at the crop border.
  """
  size = alpha.shape[0]
  mask = np.maximum(source_matte[..., 0], alpha[..., 0]).astype(np.float32)
  grow = max(1, round(PASTE_DILATION * size))
  mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
  mask = cv2.GaussianBlur(mask, (0, 0), max(PASTE_FEATHER * size, 0.5))
  fade = np.clip(
    (np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5) / max(PASTE_EDGE_FADE * size, 1.0),
    0.0,
    1.0,
  )
  return np.clip(mask * fade[:, None] * fade[None, :], 0.0, 1.0).astype(np.float32)


def paste_into(image: np.ndarray, result: np.ndarray, mask: np.ndarray, box) -> np.ndarray:
  """The portrait (H0, W0, 3) uint8 with the crop `result` (S, S, 3) in [0, 1] blended into
  `box` (x0, y0, side) through `mask` (S, S); returns (H0, W0, 3) uint8."""
  x0, y0, side = box
  height, width = image.shape[:2]
  size = result.shape[0]
  interpolation = cv2.INTER_AREA if side < size else cv2.INTER_CUBIC
  resized = np.clip(cv2.resize(result, (side, side), interpolation=interpolation), 0.0, 1.0)
  weight = cv2.resize(mask, (side, side), interpolation=cv2.INTER_LINEAR)[..., None]
  # The box may leave the portrait (crop_frame padded it): blend only the part inside.
  left, top = max(0, x0), max(0, y0)
  right, bottom = min(width, x0 + side), min(height, y0 + side)
  inside = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
  output = image.copy()
  region = output[top:bottom, left:right].astype(np.float32) / 255.0
  blended = weight[inside] * resized[inside] + (1.0 - weight[inside]) * region
  output[top:bottom, left:right] = np.round(blended * 255.0).astype(np.uint8)
  return output


# --------------------------------------------------------------------------- the report


class MotionReport:
  """How well an output video follows its driving clip (and keeps the source's identity).

  For every output frame the face mesh runs on the frame alone (no tracking from the previous
  frame, so a frame without a recognisable face counts as one). Measures (metrics.face_measures:
  mouth and eye opening, gaze, yaw, pitch, roll) of the output are correlated (Pearson) with the
  same measures of the driving frames, over the frames where both have a face; gaze_error
  (metrics.gaze_error) is how far, in eye widths, the output's gaze moves from the driver's.
  """

  def __init__(self, landmarker: face.FaceLandmarker, identity_embed=None, source=None):
    self._landmarker = landmarker
    self._identity_embed = identity_embed
    self._source_descriptor = None
    if identity_embed is not None and source is not None:
      self._source_descriptor = identity_embed(media.to_uint8(source))
    self._found: list[np.ndarray | None] = []
    self._identity: list[float] = []

  def add(self, frame: np.ndarray) -> None:
    """One output frame, (S, S, 3) float in [0, 1]."""
    image = media.to_uint8(frame)
    self._landmarker.reset()
    points = self._landmarker(image)
    if points is not None:
      points = crops.normalise_landmarks(points, (0, 0, image.shape[1]))
    self._found.append(points)
    if self._source_descriptor is not None:
      descriptor = self._identity_embed(image)
      if descriptor is not None:
        distance = metrics.cosine_distance(descriptor[None], self._source_descriptor[None])
        self._identity.append(float(distance[0]))

  def result(self, driving_landmarks: np.ndarray, driving_has_face: np.ndarray) -> dict:
    """The report: frames, face_found_fraction, correlation {measure: r or None}, identity."""
    found = np.array([points is not None for points in self._found])
    both = found & driving_has_face[: len(found)]
    report = {
      'frames': len(found),
      'face_found_fraction': float(found.mean()) if len(found) else 0.0,
      'frames_measured': int(both.sum()),
      'correlation': {name: None for name in metrics.MOTION_MEASURES},
      'gaze_error': None,
      'identity_distance': float(np.mean(self._identity)) if self._identity else None,
      'skipped': {},
    }
    if self._source_descriptor is None:
      report['skipped']['identity_distance'] = (
        'no identity model (--identity_weights: dlib_face_recognition_resnet_model_v1.dat)'
      )
    if both.sum() < 3:
      report['skipped']['correlation'] = f'a face in only {int(both.sum())} output frames'
      return report
    canonical = face_topology.canonical_landmarks()
    output = np.stack([self._found[i] for i in np.flatnonzero(both)])
    driving = driving_landmarks[: len(found)][both][:, : output.shape[1]]
    measured = metrics.face_measures(output, canonical, face_topology.STABLE)
    wanted = metrics.face_measures(driving, canonical, face_topology.STABLE)
    for name in metrics.MOTION_MEASURES:
      value = metrics.pearson(wanted[name], measured[name])
      report['correlation'][name] = None if math.isnan(value) else round(value, 4)
    report['gaze_error'] = round(metrics.gaze_error(wanted, measured), 5)
    # The series behind the correlations (to compare two outputs frame by frame).
    report['per_frame'] = {
      'frame': [int(i) for i in np.flatnonzero(both)],
      'driving': {name: np.round(wanted[name], 5).tolist() for name in metrics.MOTION_MEASURES},
      'output': {name: np.round(measured[name], 5).tolist() for name in metrics.MOTION_MEASURES},
    }
    return report


# ------------------------------------------------------------------------------ helpers


def summary_notes(summary: dict) -> list[str]:
  """What a user should know about a finished reenactment (reenact's summary), as sentences:
  shots re-anchored, driving frames filled, a small source face upscaled."""
  notes = []
  if summary['shots'] > 1:
    notes.append(f'{summary["shots"]} shots: the motion was re-anchored after each cut.')
  if summary['frames_without_face']:
    notes.append(f'{summary["frames_without_face"]} driving frames without a face were filled.')
  if summary['occluded_frames']:
    regions = ', '.join(f'{name} {count}' for name, count in summary['occluded_regions'].items())
    action = 'filled in from the frames around them' if summary['occlusion_filled'] else 'kept'
    notes.append(
      f'{summary["occluded_frames"]} driving frames had part of the face covered ({regions} '
      f'frames); its landmarks were {action}.'
    )
  if summary['upscaled'] > 1.5:
    notes.append(
      f'The source face is small ({summary["source_face_pixels"]:.0f} px wide); its crop was '
      f'upscaled {summary["upscaled"]:.1f}x.'
    )
  return notes


def model_name(step: int | None) -> str:
  """'step N', or 'the geometric prior alone' for step None (reenact's summary['step'])."""
  return 'the geometric prior alone' if step is None else f'step {step}'


def side_by_side_path(output_path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(output_path)
  return path.with_name(f'{path.stem}{SIDE_BY_SIDE_SUFFIX}{path.suffix}')


def report_path(output_path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(output_path)
  return path.with_name(f'{path.stem}{REPORT_SUFFIX}')


def _progress(iterable: Iterable, enabled: bool, description: str, total: int | None = None):
  """A tqdm progress bar on stderr (or the iterable itself when disabled)."""
  if not enabled:
    return iterable
  return tqdm(
    iterable,
    desc=description,
    total=total,
    unit='frame',
    file=sys.stderr,
    leave=False,
    dynamic_ncols=True,
  )


def _report_track(options, renderer, landmarker, tracks, frames: int) -> DrivingTrack:
  """The tracked --report_against clip, which must have `frames` frames."""
  key = track_key(options.report_against, options.driving_face)
  track = tracks.get(key) if tracks is not None else None
  if track is None:
    _checked('--report_against', media.probe_video, options.report_against)
    track = track_driving(
      options.report_against, landmarker, renderer.num_landmarks, progress=False
    )
    if tracks is not None:
      tracks[key] = track
  if track.num_frames != frames:
    raise ReenactError(
      f'--report_against {options.report_against} has {track.num_frames} frames and --driving '
      f'{frames}; score against the same clip before it was changed.'
    )
  return track


def _pad(array: np.ndarray, size: int) -> np.ndarray:
  """(n, ...) -> (size, ...) repeating the last row: every batch has one shape, one compile."""
  if len(array) == size:
    return array
  return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def _checked(flag: str, function, path):
  """function(path), with a media.InputError turned into a ReenactError naming the flag."""
  try:
    return function(path)
  except media.InputError as error:
    raise ReenactError(f'{flag} {error}') from error


# ------------------------------------------------------------------------------ reenact


def reenact(
  workdir: str | os.PathLike | None,
  source_path: str | os.PathLike | Sequence[str | os.PathLike],
  driving_path: str | os.PathLike,
  output_path: str | os.PathLike,
  options: Options = Options(),
  *,
  progress: bool = True,
  renderer: Renderer | None = None,
  tracks: dict | None = None,
) -> dict:
  """Renders the source portrait performing the driving clip into `output_path`.

  Args:
    source_path: the portrait (an image, or a video: its --source_frame or most frontal frame),
      or several portraits of one person: the first is the one reenacted (its background, body
      and crop), the others are more views of the person (models.fusion: each shows the parts
      of the face it sees best). Several views need a checkpoint (--workdir), not an export.
    renderer: a Renderer to reuse (e.g. across calls in the demo, or an ExportRenderer); by
      default `load(workdir, options.step, prior_only=options.prior_only)` (workdir may be None
      when a renderer is given).
    tracks: a dict to keep tracked driving clips in across calls with one renderer (jobs.py),
      keyed by track_key; a clip found there is not tracked again.

  Returns:
    dict(frames, fps (end to end), seconds, render_fps (after the first batch, which
    compiles), video_fps, step (None for the prior alone), motion ('relative'/'absolute'),
    reference_frames (relative: one per shot), shots, frames_without_face, occluded_frames and
    occluded_regions (driving frames with part of the face covered, and per region how many),
    occlusion_filled, source (what was used), source_face_pixels, upscaled (the source crop's
    upscaling factor, > 1 for a small face), output, side_by_side (path or None), report (dict
    or None), report_path).

  Raises:
    ReenactError for bad inputs (see the module docstring).
  """
  start = time.perf_counter()
  if options.batch_size < 1:
    raise ReenactError(f'--batch_size must be at least 1, got {options.batch_size}.')
  if options.motion not in MOTIONS:
    raise ReenactError(f'--motion={options.motion!r}: use one of {", ".join(MOTIONS)}.')
  if options.smoothing < 0:
    raise ReenactError(f'--smoothing must be >= 0 (0 = off), got {options.smoothing}.')
  output_path = _checked('--output', media.check_output, output_path)
  if options.report_against and not options.report:
    raise ReenactError('--report_against scores the motion report: give --report too.')
  source_paths = [source_path] if isinstance(source_path, (str, os.PathLike)) else list(source_path)
  if not source_paths:
    raise ReenactError('--source: give at least one portrait.')
  source_path, extra_paths = source_paths[0], source_paths[1:]
  inputs = [('--source', path) for path in source_paths] + [('--driving', driving_path)]
  if options.report_against:
    inputs.append(('--report_against', options.report_against))
  for flag, path in inputs:
    if pathlib.Path(path).resolve() == output_path.resolve():
      raise ReenactError(f'--output {output_path} is the {flag} file; choose another name.')
  side_path = side_by_side_path(output_path) if options.side_by_side else None
  video = _checked('--driving', media.probe_video, driving_path)

  landmarker = _quiet(lambda: face.FaceLandmarker(face_index=options.driving_face))
  segmenter = _quiet(face.PersonSegmenter)
  if options.source_views < 1:
    raise ReenactError(f'--source_views must be at least 1, got {options.source_views}.')
  read = read_source(source_path, landmarker, options.source_frame, options.source_views)
  (image, source_pixels, source_used), sampled = read[0], read[1:]
  renderer = renderer or load(workdir, options.step, prior_only=options.prior_only)
  if (extra_paths or sampled) and isinstance(renderer, ExportRenderer):
    raise ReenactError(
      'several --source images need the checkpoint (--workdir): the exported generator takes '
      'one source image.'
    )
  size = renderer.image_size
  source = prepare_source(image, source_pixels, size, renderer.num_landmarks, segmenter)
  views = []  # The other views of the person, each cropped on its own face.
  for view_image, view_pixels, used in sampled + [
    read_source(path, landmarker, None)[0] for path in extra_paths
  ]:
    views.append(
      (prepare_source(view_image, view_pixels, size, renderer.num_landmarks, segmenter), used)
    )
  upscaled = size / source.box[2]
  if upscaled > 1.5:
    logging.warning(
      'The source face is small (%.0f px wide): its crop is upscaled %.1fx to %d px; expect a '
      'soft result.',
      source.face_pixels,
      upscaled,
      size,
    )
  key = track_key(driving_path, options.driving_face)
  track = tracks.get(key) if tracks is not None else None
  if track is None:
    track = track_driving(driving_path, landmarker, renderer.num_landmarks, progress=progress)
    if tracks is not None:
      tracks[key] = track
  scored = track  # What the report scores the output against.
  if options.report and options.report_against:
    scored = _report_track(options, renderer, landmarker, tracks, track.num_frames)
  same_clip = pathlib.Path(source_path).resolve() == pathlib.Path(driving_path).resolve()
  relative = options.motion == 'relative' or (options.motion == 'auto' and not same_clip)
  driving_landmarks, references = driving_motion(
    source.landmarks, track, options, float(video.fps), relative
  )

  if options.paste_back:
    out_height, out_width = image.shape[:2]
  else:
    out_height = out_width = size
  audio = driving_path if options.audio and video.has_audio else None
  writers = []
  try:
    writer = media.VideoWriter(output_path, video.fps, out_height, out_width, audio_from=audio)
    writers.append(writer)
    if side_path is not None:
      side_writer = media.VideoWriter(side_path, video.fps, size, 3 * size)
      writers.append(side_writer)
  except Exception as error:
    for opened in writers:
      opened.abort()
    raise ReenactError(f'--output {output_path} cannot be written: {error}') from error

  report = None
  if options.report:
    embed = None
    if options.identity_weights:
      try:
        embed = face.dlib_identity_embedder(options.identity_weights)
      except face.IdentityModelError as error:
        raise ReenactError(f'--identity_weights: {error}') from error
    report = MotionReport(_quiet(face.FaceLandmarker), embed, source.crop)
  batch_size = options.batch_size
  source_inputs = {
    'source': np.repeat(source.crop[None], batch_size, axis=0),
    'source_landmarks': np.repeat(source.landmarks[None], batch_size, axis=0),
    'source_mask': np.repeat(source.mask[None], batch_size, axis=0),
    'source_matte': np.repeat(source.matte[None], batch_size, axis=0),
  }
  if views:
    # models.EXTRA_SOURCE_NAMES (the models are not imported here; see load).
    names = ('extra_sources', 'extra_source_landmarks', 'extra_source_mattes')
    for name, key in zip(names, ('crop', 'landmarks', 'matte'), strict=True):
      stacked = np.stack([getattr(view, key) for view, _ in views])
      source_inputs[name] = np.repeat(stacked[None], batch_size, axis=0)
  source_panel = media.to_uint8(source.crop)
  source_hole = np.asarray(geometry.hole_of(source.matte[None]))[0]
  frames = 0
  render_start = None  # (time, frames written) once the first batch (which compiles) is out.

  def write(driving_crops: list[np.ndarray], outputs: dict) -> None:
    nonlocal render_start
    count = len(driving_crops)
    results = np.asarray(outputs['output'][:count], np.float32)
    alphas = np.asarray(outputs['alpha'][:count], np.float32)
    for crop, result, alpha in zip(driving_crops, results, alphas, strict=True):
      if options.paste_back:
        mask = paste_mask(source_hole, alpha)
        writer.write(paste_into(image, result, mask, source.box))
      else:
        writer.write(media.to_uint8(result))
      if side_path is not None:
        side_writer.write(np.concatenate([source_panel, crop, media.to_uint8(result)], axis=1))
      if report is not None:
        report.add(result)
    if render_start is None:
      render_start = (time.perf_counter(), writer.frames)

  try:
    driving_crops = (
      crops.crop_frame(frame, track.box_of(index), size)
      for index, frame in enumerate(_driving_frames(track))
    )
    driving_crops = _progress(driving_crops, progress, 'Reenacting', total=track.num_frames)
    pending = None
    for batch in media.batched(driving_crops, batch_size):
      landmarks = driving_landmarks[frames : frames + len(batch)]
      # Dispatch is asynchronous: this batch renders while the previous one is encoded.
      outputs = renderer.render({**source_inputs, 'driving_landmarks': _pad(landmarks, batch_size)})
      if pending is not None:
        write(*pending)
      pending = (batch, outputs)
      frames += len(batch)
    if pending is not None:
      write(*pending)
    if frames != track.num_frames:
      raise ReenactError(
        f'--driving {driving_path} gave {frames} frames on the second read and '
        f'{track.num_frames} on the first; the file changed or decodes inconsistently.'
      )
    for opened in writers:
      opened.close()
  except BaseException:
    for opened in writers:
      opened.abort()
    raise
  end = time.perf_counter()
  seconds = end - start
  steady_frames = frames - render_start[1]
  steady_seconds = end - render_start[0]
  report_result, written_report = None, None
  if report is not None:
    report_result = report.result(scored.landmarks, scored.has_face)
    written_report = report_path(output_path)
    written_report.write_text(json.dumps(report_result, indent=2) + '\n')
  return {
    'frames': frames,
    'fps': frames / seconds,
    'seconds': seconds,
    'render_fps': steady_frames / steady_seconds if steady_frames else math.nan,
    'video_fps': float(video.fps),
    'step': None if renderer.prior_only else renderer.step,
    'motion': 'relative' if relative else 'absolute',
    'reference_frames': references,
    'shots': len(track.shots),
    'frames_without_face': int((~track.has_face).sum()),
    'occluded_frames': int(track.occluded.any(axis=1).sum()),
    'occluded_regions': {
      name: int(count)
      for name, count in zip(occlusion.REGION_NAMES, track.occluded.sum(axis=0), strict=True)
      if count
    },
    'occlusion_filled': options.fill_occluded,
    'source': source_used,
    'extra_sources': [used for _, used in views],
    'source_face_pixels': round(source.face_pixels, 1),
    'upscaled': round(upscaled, 2),
    'audio': audio is not None,
    'output': str(output_path),
    'side_by_side': str(side_path) if side_path is not None else None,
    'report': report_result,
    'report_path': str(written_report) if written_report else None,
  }
