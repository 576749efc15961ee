"""Reenactment of a portrait with the head motion and expressions of a driving video.

The command is `python -m reenact_jax.reenact`; this module is its library (also used by the
demo). The newest checkpoint in a run directory (or a given step) is loaded with its EMA weights
and its own config (image size, landmark count). The source face and every driving frame are
cropped and given landmarks exactly as data preparation does (reenact_jax/preparation.py): the
source gets one crop box, the driving clip one stable box for the whole clip.

Motion:
  absolute (default)  the driving landmarks as they are, in the driving crop's frame: the face
                      takes the driving face's place, size and shape.
  --relative          the source landmarks moved by the driving motion since a reference driving
                      frame (the first, or with --find_best_frame the one whose expression is
                      closest to the source's): head pose change as a similarity transform of
                      the stable landmarks, plus the expression residual. Keeps the source's
                      face shape; use it for a driving person who looks different.
Output:
  --paste_back        the result is blended back into the full-resolution source image (the face
                      region, feathered), so the video has the source image's size.
  --side_by_side      also writes <output stem>_side_by_side<suffix>: source | driving | result
                      crops, each image_size wide.
The videos are H.264 at the driving clip's frame rate. Frames where no face is found hold the
nearest frame's landmarks.

A bad input (no face, unreadable video, missing checkpoint, unwritable output, image too large)
raises ReenactError, whose message names the input and what to do.
"""

import dataclasses
import logging
import math
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from reenact_jax import crops, face, face_topology, inference, media, motion, records

DEFAULT_BATCH_SIZE = 8
# Frames kept decoded between the tracking pass and the rendering pass; longer clips are
# decoded twice instead.
FRAME_CACHE_BYTES = 768 * 2**20
# Paste-back blend mask, as fractions of the crop side: the face-oval masks grown by DILATION
# (to take in the jaw line and the hairline the oval misses) and softened by FEATHER, faded to 0
# over EDGE_FADE at the crop border so the crop's edges never show.
PASTE_DILATION = 0.06
PASTE_FEATHER = 0.03
PASTE_EDGE_FADE = 0.06
SIDE_BY_SIDE_SUFFIX = '_side_by_side'


class ReenactError(ValueError):
  """A bad input: the message names the input and what to do."""


# ----------------------------------------------------------------------------- inputs


def side_by_side_path(output_path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(output_path)
  return path.with_name(f'{path.stem}{SIDE_BY_SIDE_SUFFIX}{path.suffix}')


# ------------------------------------------------------------------------------- faces


@dataclasses.dataclass(frozen=True)
class SourceFace:
  """The source portrait, its crop and what the generator needs of it."""

  image: np.ndarray  # (H0, W0, 3) uint8, the full-resolution portrait.
  box: tuple[int, int, int]  # x0, y0, side in portrait pixels.
  crop: np.ndarray  # (S, S, 3) float32 in [0, 1].
  landmarks: np.ndarray  # (N, 3) float32, normalised over the crop.
  mask: np.ndarray  # (S, S, 1) float32 {0, 1}, the face-oval polygon.
  matte: np.ndarray  # (S, S, 1) float32 [0, 1], the person matte of the crop.


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
  """
  height, width = image.shape[:2]
  box = crops.crop_box(pixel_landmarks[None], height, width)
  crop = crops.crop_frame(image, box, image_size).astype(np.float32) / 255.0
  landmarks = crops.normalise_landmarks(pixel_landmarks[:num_landmarks], box)
  mask = records.face_oval_mask(landmarks, image_size, image_size)
  matte = segmenter(media.to_uint8(crop))[..., None]
  return SourceFace(image=image, box=box, crop=crop, landmarks=landmarks, mask=mask, matte=matte)


@dataclasses.dataclass(frozen=True)
class DrivingTrack:
  """Pass 1 over the driving clip: per-frame landmarks and the clip's crop box."""

  path: pathlib.Path
  box: tuple[int, int, int]  # x0, y0, side in frame pixels, one for the whole clip.
  landmarks: np.ndarray  # (F, N, 3) float32 normalised over the box; gaps filled (see has_face).
  has_face: np.ndarray  # (F,) bool, False where the landmarks are the nearest found frame's.
  frames: list[np.ndarray] | None  # The decoded frames when they fit in memory, else None.

  @property
  def num_frames(self) -> int:
    return len(self.has_face)


def _fill_gaps(found: list[np.ndarray | None]) -> np.ndarray:
  """(F, N, 3): frames without a face take the landmarks of the nearest frame with one."""
  kept = np.array([i for i, points in enumerate(found) if points is not None])
  nearest = kept[np.abs(np.arange(len(found))[:, None] - kept[None]).argmin(axis=1)]
  return np.stack([found[i] for i in nearest])


def track_driving(
  path: str | os.PathLike, landmarker, num_landmarks: int, *, progress: bool = True
) -> DrivingTrack:
  """Tracks the face over the whole driving clip and picks its crop box (as preparation does)."""
  path = pathlib.Path(path)
  landmarker.reset()
  found, cached, cached_bytes, frame_shape = [], [], 0, None
  try:
    for frame in _progress(media.read_frames(path), progress, 'Tracking the driving face'):
      frame_shape = frame.shape
      found.append(landmarker(frame))
      if cached is not None:
        cached.append(frame)
        cached_bytes += frame.nbytes
        if cached_bytes > FRAME_CACHE_BYTES:
          cached = None  # A long clip is decoded a second time instead.
  except media.UnreadableInput as error:
    raise ReenactError(f'--driving {path}: {error}. Re-encode or choose another video.') from error
  if not found:
    raise ReenactError(f'--driving {path} holds no frames.')
  num_with_face = sum(points is not None for points in found)
  if not num_with_face:
    raise ReenactError(
      f'--driving {path}: no face found in any of its {len(found)} frames. Use a clip that shows '
      'one face, frontal enough and large enough (at least ~80 pixels across).'
    )
  if num_with_face < len(found):
    logging.warning(
      "No face found in %d of the %d driving frames; they reuse the nearest frame's landmarks.",
      len(found) - num_with_face,
      len(found),
    )
  has_face = np.array([points is not None for points in found])
  pixels = _fill_gaps(found)
  box = crops.crop_box(pixels[has_face], frame_shape[0], frame_shape[1])
  landmarks = crops.normalise_landmarks(pixels[:, :num_landmarks], box)
  return DrivingTrack(path=path, box=box, landmarks=landmarks, has_face=has_face, frames=cached)


def _driving_frames(track: DrivingTrack) -> Iterator[np.ndarray]:
  if track.frames is not None:
    yield from track.frames
    return
  try:
    yield from media.read_frames(track.path)
  except media.UnreadableInput as error:
    raise ReenactError(f'--driving {track.path} on the second read: {error}') from error


# ---------------------------------------------------------------------------- paste back


def paste_mask(source_landmarks: np.ndarray, driving_landmarks: np.ndarray, size: int):
  """(S, S) float32 in [0, 1]: where the result replaces the source when pasted back.

  The union of the source's and the rendered face's oval (the face may move out of where it
  was), grown, feathered, and faded to 0 at the crop border.
  """
  oval = face_topology.FACE_OVAL
  mask = np.maximum(
    records.mask_from_polygon(source_landmarks[oval, :2], size, size)[..., 0],
    records.mask_from_polygon(driving_landmarks[oval, :2], size, size)[..., 0],
  )
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


def _landmarker():
  """face.FaceLandmarker, without the TFLite runtime's banner on stderr (it would
  precede every error message; fd 2 is silenced only while the interpreters are created)."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        return face.FaceLandmarker()
      finally:
        os.dup2(saved, 2)
  finally:
    os.close(saved)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
  """(n, ...) -> (size, ...) repeating the last row: every batch has one shape, one compile."""
  if len(array) == size:
    return array
  return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def load(workdir: str | os.PathLike, step: int | None = None):
  """inference.load_generator with every failure turned into a ReenactError."""
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
  num_landmarks = int(loaded.config.model.num_landmarks)
  if num_landmarks not in (468, 478):
    raise ReenactError(
      f'--workdir {workdir}: the checkpoint expects {num_landmarks} landmarks per face; the face '
      'mesh gives 478 (or 468 without irises). It is not a face-mesh model.'
    )
  return loaded


def _checked(flag: str, function, path):
  """function(path), with a media.InputError turned into a ReenactError naming the flag."""
  try:
    return function(path)
  except media.InputError as error:
    raise ReenactError(f'{flag} {error}') from error


# ------------------------------------------------------------------------------ reenact


def reenact(
  workdir: str | os.PathLike,
  source_path: str | os.PathLike,
  driving_path: str | os.PathLike,
  output_path: str | os.PathLike,
  *,
  relative: bool = False,
  find_best_frame: bool = False,
  paste_back: bool = False,
  side_by_side: bool = False,
  step: int | None = None,
  batch_size: int = DEFAULT_BATCH_SIZE,
  progress: bool = True,
  loaded=None,
) -> dict:
  """Renders the source portrait performing the driving clip into `output_path`.

  Args:
    loaded: an inference.LoadedGenerator to reuse (e.g. across calls in the demo); by default
      the checkpoint of `workdir` at `step` (newest when None) is loaded.
  Returns:
    dict(frames, fps (frames per second, end to end), seconds (end to end), render_fps (frames
    per second of the render loop after the first batch, which compiles), video_fps, step,
    reference_frame (relative mode, else None), output, side_by_side (path or None)).
  Raises:
    ReenactError for bad inputs (see the module docstring).
  """
  start = time.perf_counter()
  if batch_size < 1:
    raise ReenactError(f'--batch_size must be at least 1, got {batch_size}.')
  if find_best_frame and not relative:
    logging.warning('--find_best_frame only matters with --relative; ignored.')
  output_path = _checked('--output', media.check_output, output_path)
  for flag, path in (('--source', source_path), ('--driving', driving_path)):
    if pathlib.Path(path).resolve() == output_path.resolve():
      raise ReenactError(f'--output {output_path} is the {flag} file; choose another name.')
  side_path = side_by_side_path(output_path) if side_by_side else None
  image = _checked('--source', media.read_image, source_path)
  video = _checked('--driving', media.probe_video, driving_path)

  landmarker = _landmarker()
  source_pixels = landmarker(image)
  if source_pixels is None:
    raise ReenactError(
      f'--source {source_path}: no face found. Use a portrait with one clearly visible, roughly '
      'frontal face (at least ~80 pixels across).'
    )
  loaded = loaded if loaded is not None else load(workdir, step)
  image_size = int(loaded.config.image_size)
  num_landmarks = int(loaded.config.model.num_landmarks)
  source = prepare_source(image, source_pixels, image_size, num_landmarks, face.PersonSegmenter())
  track = track_driving(driving_path, landmarker, num_landmarks, progress=progress)

  reference = None
  if relative:
    reference = motion.reference_frame(
      source.landmarks, track.landmarks, track.has_face, find_best_frame
    )
    driving_landmarks = motion.relative_landmarks(source.landmarks, track.landmarks, reference)
    logging.info('Relative motion from driving frame %d.', reference)
  else:
    driving_landmarks = track.landmarks

  if paste_back:
    out_height, out_width = image.shape[:2]
  else:
    out_height = out_width = image_size
  writers = []
  try:
    writer = media.VideoWriter(output_path, video.fps, out_height, out_width)
    writers.append(writer)
    if side_path is not None:
      side_writer = media.VideoWriter(side_path, video.fps, image_size, 3 * image_size)
      writers.append(side_writer)
  except Exception as error:
    for opened in writers:
      opened.abort()
    raise ReenactError(f'--output {output_path} cannot be written: {error}') from error

  source_inputs = {
    'source': np.repeat(source.crop[None], batch_size, axis=0),
    'source_landmarks': np.repeat(source.landmarks[None], batch_size, axis=0),
    'source_mask': np.repeat(source.mask[None], batch_size, axis=0),
    'source_matte': np.repeat(source.matte[None], batch_size, axis=0),
  }
  source_panel = media.to_uint8(source.crop)
  frames = 0
  render_start = None  # (time, frames written) once the first batch (which compiles) is out.

  def write(driving_crops: list[np.ndarray], landmarks: np.ndarray, outputs: dict) -> None:
    nonlocal render_start
    results = np.asarray(outputs['output'][: len(driving_crops)], np.float32)
    for crop, frame_landmarks, result in zip(driving_crops, landmarks, results, strict=True):
      if paste_back:
        mask = paste_mask(source.landmarks, frame_landmarks, image_size)
        writer.write(paste_into(image, result, mask, source.box))
      else:
        writer.write(media.to_uint8(result))
      if side_path is not None:
        side_writer.write(np.concatenate([source_panel, crop, media.to_uint8(result)], axis=1))
    if render_start is None:
      render_start = (time.perf_counter(), writer.frames)

  try:
    driving_crops = (crops.crop_frame(f, track.box, image_size) for f in _driving_frames(track))
    driving_crops = _progress(driving_crops, progress, 'Reenacting', total=track.num_frames)
    pending = None
    for batch in inference.batched(driving_crops, batch_size):
      landmarks = driving_landmarks[frames : frames + len(batch)]
      # Dispatch is asynchronous: this batch renders while the previous one is encoded.
      outputs = loaded({**source_inputs, 'driving_landmarks': _pad(landmarks, batch_size)})
      if pending is not None:
        write(*pending)
      pending = (batch, landmarks, outputs)
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
  return {
    'frames': frames,
    'fps': frames / seconds,
    'seconds': seconds,
    'render_fps': steady_frames / steady_seconds if steady_frames else math.nan,
    'video_fps': float(video.fps),
    'step': loaded.step,
    'reference_frame': reference,
    'output': str(output_path),
    'side_by_side': str(side_path) if side_path is not None else None,
  }
