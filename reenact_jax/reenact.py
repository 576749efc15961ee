r"""Reenact a portrait with the head motion and expressions of a driving video.

  python -m reenact_jax.reenact --workdir=DIR --source=portrait.jpg --driving=clip.mp4 \
      --output=out.mp4 [--step=N] [--relative] [--find_best_frame] [--paste_back] \
      [--side_by_side] [--batch_size=8]

The newest checkpoint in DIR (or --step) is loaded with its EMA weights and its own config
(image size, landmark count). The source face and every driving frame are cropped and given
landmarks exactly as data preparation does (data/clips.py, data/face_models.py): the source gets
one crop box, the driving clip one stable box for the whole clip.

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
nearest frame's landmarks. Dashed spellings (--find-best-frame, --paste-back, --side-by-side,
--batch-size) are accepted too.

A bad input (no face, unreadable video, missing checkpoint, unwritable output, image too large)
ends with one message on stderr and exit status 1.
"""

import dataclasses
import fractions
import functools
import logging
import math
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from data import clips as clips_lib
from reenact_jax import face_topology, inference, records

# Decoding a larger image or frame needs gigabytes; refuse it before decoding.
MAX_PIXELS = 50_000_000
DEFAULT_BATCH_SIZE = 8
DEFAULT_FPS = fractions.Fraction(25)
OUTPUT_SUFFIXES = ('.mp4', '.mov', '.mkv')
# The crop's face extent, as in preparation: the model saw faces at this scale.
FACE_FRACTION = clips_lib.Options.face_fraction
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


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """The image at `path` as RGB uint8 (H, W, 3), EXIF orientation applied.

  Raises ReenactError for a missing, undecodable or too large (> max_pixels) image; the size is
  read from the header before any pixel is decoded.
  """
  from PIL import Image, ImageOps, UnidentifiedImageError

  path = pathlib.Path(path)
  if not path.is_file():
    raise ReenactError(f'--source {path} does not exist or is not a file.')
  try:
    with Image.open(path) as image:  # Reads the header only.
      width, height = image.size
      if width * height > max_pixels:
        raise ReenactError(
          f'--source {path} is {width}x{height} = {width * height / 1e6:.0f} megapixels, over '
          f'the {max_pixels / 1e6:.0f} megapixel limit. Downscale it first.'
        )
      image.load()
      image = ImageOps.exif_transpose(image).convert('RGB')
      return np.asarray(image, dtype=np.uint8)
  except ReenactError:
    raise
  except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
    raise ReenactError(
      f'--source {path} is not a readable image ({type(error).__name__}: {error}). Use a JPEG '
      'or PNG portrait.'
    ) from error


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  width: int
  height: int
  fps: fractions.Fraction
  declared_frames: int  # 0 when the container does not say.


def probe_video(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> VideoInfo:
  """Size, frame rate and frame count of the video at `path`, without decoding frames."""
  import av

  path = pathlib.Path(path)
  if not path.is_file():
    raise ReenactError(f'--driving {path} does not exist or is not a file.')
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise ReenactError(f'--driving {path} has no video stream.')
      stream = container.streams.video[0]
      width, height = stream.codec_context.width, stream.codec_context.height
      rate = stream.average_rate or stream.guessed_rate
      declared = stream.frames or 0
  except ReenactError:
    raise
  except (av.FFmpegError, OSError, ValueError) as error:
    raise ReenactError(
      f'--driving {path} is not a readable video ({error}). Use an MP4/MOV/MKV/AVI file.'
    ) from error
  if width * height > max_pixels:
    raise ReenactError(
      f'--driving {path} frames are {width}x{height}, over the {max_pixels / 1e6:.0f} megapixel '
      'limit. Downscale the video first.'
    )
  if rate:
    fps = fractions.Fraction(rate).limit_denominator(100_000)
  else:
    logging.warning('%s does not declare its frame rate; writing at %s fps.', path, DEFAULT_FPS)
    fps = DEFAULT_FPS
  return VideoInfo(width=width, height=height, fps=fps, declared_frames=int(declared))


def check_output(path: str | os.PathLike) -> pathlib.Path:
  """Fails early (before any model work) when `path` cannot be written as a video."""
  path = pathlib.Path(path)
  if path.suffix.lower() not in OUTPUT_SUFFIXES:
    raise ReenactError(
      f'--output {path}: use one of the extensions {", ".join(OUTPUT_SUFFIXES)} (H.264 video).'
    )
  if path.is_dir():
    raise ReenactError(f'--output {path} is a folder; give a file name such as {path}/out.mp4.')
  parent = path.parent if str(path.parent) else pathlib.Path('.')
  if not parent.is_dir():
    raise ReenactError(f'--output {path}: the folder {parent} does not exist. Create it first.')
  if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
    raise ReenactError(f'--output {path} cannot be written (permission denied).')
  return path


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


def prepare_source(
  image: np.ndarray, pixel_landmarks: np.ndarray, image_size: int, num_landmarks: int
) -> SourceFace:
  """Crops the portrait around its face as preparation crops a (one-frame) clip.

  Args:
    image: (H0, W0, 3) uint8. pixel_landmarks: (478, 3) in frame pixels (FaceLandmarker).
    image_size: the crop side S in pixels (config.image_size).
    num_landmarks: config.model.num_landmarks (478, or 468 without the irises).
  """
  height, width = image.shape[:2]
  box = clips_lib.crop_box(pixel_landmarks[None], height, width, FACE_FRACTION)
  crop = clips_lib.crop_frame(image, box, image_size).astype(np.float32) / 255.0
  landmarks = clips_lib.normalise_landmarks(pixel_landmarks[:num_landmarks], box)
  mask = records.mask_from_polygon(landmarks[face_topology.FACE_OVAL, :2], image_size, image_size)
  return SourceFace(image=image, box=box, crop=crop, landmarks=landmarks, mask=mask)


@dataclasses.dataclass(frozen=True)
class DrivingTrack:
  """Pass 1 over the driving clip: per-frame landmarks and the clip's crop box."""

  clip: clips_lib.ClipInput
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
  clip = clips_lib.ClipInput(
    identity='driving', name=path.stem, path=str(path), is_frame_folder=False
  )
  landmarker.reset()
  found, cached, cached_bytes, frame_shape = [], [], 0, None
  try:
    for frame in _progress(clips_lib.read_frames(clip), progress, 'Tracking the driving face'):
      frame_shape = frame.shape
      found.append(landmarker(frame))
      if cached is not None:
        cached.append(frame)
        cached_bytes += frame.nbytes
        if cached_bytes > clips_lib.FRAME_CACHE_BYTES:
          cached = None  # A long clip is decoded a second time instead.
  except clips_lib.UnreadableInput as error:
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
  box = clips_lib.crop_box(pixels[has_face], frame_shape[0], frame_shape[1], FACE_FRACTION)
  landmarks = clips_lib.normalise_landmarks(pixels[:, :num_landmarks], box)
  return DrivingTrack(clip=clip, box=box, landmarks=landmarks, has_face=has_face, frames=cached)


def _driving_frames(track: DrivingTrack) -> Iterator[np.ndarray]:
  if track.frames is not None:
    yield from track.frames
    return
  try:
    yield from clips_lib.read_frames(track.clip)
  except clips_lib.UnreadableInput as error:
    raise ReenactError(f'--driving {track.clip.path} on the second read: {error}') from error


# ------------------------------------------------------------------------------ motion


def _inverse_similarity(scale, rotation, translation):
  """Parameters of x = (y - t) @ R / s, the inverse of y = s x @ R.T + t."""
  inverse_translation = -np.einsum('bi,bij->bj', translation, rotation) / scale[:, None]
  return 1.0 / scale, np.swapaxes(rotation, -1, -2), inverse_translation


@functools.cache
def _similarity_transform_jit():
  """geometry.similarity_transform compiled once per shape (eagerly, each of its ops would)."""
  import jax

  from reenact_jax import geometry

  return jax.jit(geometry.similarity_transform)


def _similarity(src: np.ndarray, dst: np.ndarray, indices: np.ndarray | None = None):
  """Least-squares similarity (B,), (B, 3, 3), (B, 3) with dst ~ s src @ R.T + t, fitted on
  `indices` (all points when None). src, dst: (B, N, 3), broadcastable over B."""
  batch = max(len(src), len(dst))
  src = np.broadcast_to(src, (batch, *src.shape[1:]))
  dst = np.broadcast_to(dst, (batch, *dst.shape[1:]))
  if indices is not None:
    src, dst = src[:, indices], dst[:, indices]
  scale, rotation, translation = _similarity_transform_jit()(
    np.asarray(src, np.float32), np.asarray(dst, np.float32)
  )
  return (
    np.asarray(scale, np.float64),
    np.asarray(rotation, np.float64),
    np.asarray(translation, np.float64),
  )


def _apply(points: np.ndarray, scale, rotation, translation) -> np.ndarray:
  """s * points @ R.T + t for points (B, N, 3) and per-batch transforms."""
  return (
    scale[:, None, None] * np.einsum('bnj,bij->bni', points, rotation) + translation[:, None, :]
  )


def alignment_error(source: np.ndarray, driving: np.ndarray) -> np.ndarray:
  """(F,) mean distance (normalised units) between the source (N, 3) and each driving frame
  (F, N, 3) after a similarity alignment of all landmarks: expression difference, not pose."""
  aligned = _apply(driving.astype(np.float64), *_similarity(driving, source[None]))
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
  source = source.astype(np.float64)
  driving = driving.astype(np.float64)
  reference_points = driving[reference : reference + 1]
  pose = _similarity(reference_points, driving, stable)  # T_t, reference -> frame t.
  align = _similarity(reference_points, source[None], stable)  # A, reference -> source.
  unposed = _apply(driving, *_inverse_similarity(*pose))
  residual = unposed - reference_points
  residual_in_source = _apply(residual, align[0], align[1], np.zeros_like(align[2]))
  moved = source[None] + residual_in_source
  moved = _apply(moved, *_inverse_similarity(*align))
  moved = _apply(moved, *pose)
  batch = len(driving)
  moved = _apply(moved, *(np.broadcast_to(a, (batch, *a.shape[1:])) for a in align))
  moved[..., 2] -= moved[..., 2].mean(axis=-1, keepdims=True)
  return moved.astype(np.float32)


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


# -------------------------------------------------------------------------------- video


class VideoWriter:
  """H.264 (yuv420p) video writer; the file appears at `path` only when closed successfully.

  4:2:0 chroma needs even sizes: an odd height or width gets one replicated row or column (so a
  pasted-back portrait of odd size comes out one pixel larger).
  """

  def __init__(self, path: pathlib.Path, fps: fractions.Fraction, height: int, width: int):
    import av

    self.path = pathlib.Path(path)
    # Same folder (an atomic rename), same suffix (the container format follows it).
    self._partial = self.path.with_name(
      f'.{self.path.stem}.partial-{os.getpid()}{self.path.suffix}'
    )
    self.height, self.width = height, width
    self._container = av.open(str(self._partial), mode='w')
    self._stream = self._container.add_stream('libx264', rate=fps)
    self._stream.height = height + height % 2
    self._stream.width = width + width % 2
    self._stream.pix_fmt = 'yuv420p'
    self._stream.options = {'crf': '18', 'preset': 'fast'}
    self.frames = 0

  def write(self, frame: np.ndarray) -> None:
    """One RGB uint8 frame (H, W, 3)."""
    import av

    if frame.shape != (self.height, self.width, 3):
      raise ValueError(f'frame {frame.shape} != {(self.height, self.width, 3)}')
    pad = ((0, self.height % 2), (0, self.width % 2), (0, 0))
    if any(p[1] for p in pad):
      frame = np.pad(frame, pad, mode='edge')
    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')
    self._container.mux(self._stream.encode(video_frame))
    self.frames += 1

  def close(self) -> None:
    self._container.mux(self._stream.encode(None))
    self._container.close()
    self._partial.replace(self.path)

  def abort(self) -> None:
    try:
      self._container.close()
    except Exception:  # Already broken: the partial file is removed either way.
      pass
    self._partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ helpers


def _progress(iterable: Iterable, enabled: bool, description: str, total: int | None = None):
  """tqdm on stderr when installed (it is not pinned), else a plain stderr line per second."""
  if not enabled:
    return iterable
  try:
    from tqdm import tqdm
  except ImportError:
    return _plain_progress(iterable, description, total)
  return tqdm(
    iterable,
    desc=description,
    total=total,
    unit='frame',
    file=sys.stderr,
    leave=False,
    dynamic_ncols=True,
  )


def _plain_progress(iterable: Iterable, description: str, total: int | None):
  last = 0.0
  count = 0
  for count, item in enumerate(iterable, 1):
    yield item
    now = time.perf_counter()
    if now - last >= 1.0:
      last = now
      of_total = f'/{total}' if total else ''
      print(f'\r{description}: {count}{of_total} frames', end='', file=sys.stderr, flush=True)
  print(f'\r{description}: {count} frames', file=sys.stderr, flush=True)


def _landmarker():
  """data.face_models.FaceLandmarker, without the TFLite runtime's banner on stderr (it would
  precede every error message; fd 2 is silenced only while the interpreters are created)."""
  from data import face_models

  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        return face_models.FaceLandmarker()
      finally:
        os.dup2(saved, 2)
  finally:
    os.close(saved)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
  """(n, ...) -> (size, ...) repeating the last row: every batch has one shape, one compile."""
  if len(array) == size:
    return array
  return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


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
  output_path = check_output(output_path)
  for flag, path in (('--source', source_path), ('--driving', driving_path)):
    if pathlib.Path(path).resolve() == output_path.resolve():
      raise ReenactError(f'--output {output_path} is the {flag} file; choose another name.')
  side_path = side_by_side_path(output_path) if side_by_side else None
  image = read_image(source_path)
  video = probe_video(driving_path)

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
  source = prepare_source(image, source_pixels, image_size, num_landmarks)
  track = track_driving(driving_path, landmarker, num_landmarks, progress=progress)

  reference = None
  if relative:
    reference = reference_frame(source.landmarks, track.landmarks, track.has_face, find_best_frame)
    driving_landmarks = relative_landmarks(source.landmarks, track.landmarks, reference)
    logging.info('Relative motion from driving frame %d.', reference)
  else:
    driving_landmarks = track.landmarks

  if paste_back:
    out_height, out_width = image.shape[:2]
  else:
    out_height = out_width = image_size
  writers = []
  try:
    writer = VideoWriter(output_path, video.fps, out_height, out_width)
    writers.append(writer)
    if side_path is not None:
      side_writer = VideoWriter(side_path, video.fps, image_size, 3 * image_size)
      writers.append(side_writer)
  except Exception as error:
    for opened in writers:
      opened.abort()
    raise ReenactError(f'--output {output_path} cannot be written: {error}') from error

  source_batch = np.repeat(source.crop[None], batch_size, axis=0)
  source_landmarks_batch = np.repeat(source.landmarks[None], batch_size, axis=0)
  source_mask_batch = np.repeat(source.mask[None], batch_size, axis=0)
  source_panel = _to_uint8(source.crop)
  frames = 0
  render_start = None  # (time, frames written) once the first batch (which compiles) is out.

  def write(crops: list[np.ndarray], landmarks: np.ndarray, outputs: dict) -> None:
    nonlocal render_start
    results = np.asarray(outputs['output'][: len(crops)], np.float32)
    for crop, frame_landmarks, result in zip(crops, landmarks, results, strict=True):
      if paste_back:
        mask = paste_mask(source.landmarks, frame_landmarks, image_size)
        writer.write(paste_into(image, result, mask, source.box))
      else:
        writer.write(_to_uint8(result))
      if side_path is not None:
        side_writer.write(np.concatenate([source_panel, crop, _to_uint8(result)], axis=1))
    if render_start is None:
      render_start = (time.perf_counter(), writer.frames)

  try:
    crops = (clips_lib.crop_frame(f, track.box, image_size) for f in _driving_frames(track))
    crops = _progress(crops, progress, 'Reenacting', total=track.num_frames)
    pending = None
    for batch in inference.batched(crops, batch_size):
      landmarks = driving_landmarks[frames : frames + len(batch)]
      # Dispatch is asynchronous: this batch renders while the previous one is encoded.
      outputs = loaded(
        source_batch, source_landmarks_batch, _pad(landmarks, batch_size), source_mask_batch
      )
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


# -------------------------------------------------------------------------------- main


def _define_flags():
  from absl import flags

  flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/.')
  flags.DEFINE_string('source', None, 'Source portrait (JPEG/PNG).')
  flags.DEFINE_string('driving', None, 'Driving video.')
  flags.DEFINE_string('output', None, 'Output video (.mp4, .mov or .mkv).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
  flags.DEFINE_bool('relative', False, 'Relative motion (see the module docstring).')
  flags.DEFINE_bool(
    'find_best_frame',
    False,
    'Relative motion from the driving frame whose '
    "expression is closest to the source's, not the first frame.",
  )
  flags.DEFINE_bool('paste_back', False, 'Blend the result into the full-resolution source.')
  flags.DEFINE_bool('side_by_side', False, 'Also write <output stem>_side_by_side.mp4.')
  flags.DEFINE_integer('batch_size', DEFAULT_BATCH_SIZE, 'Frames rendered per jitted call.')
  for name in ('find_best_frame', 'paste_back', 'side_by_side', 'batch_size'):
    flags.DEFINE_alias(name.replace('_', '-'), name)
  flags.mark_flags_as_required(['workdir', 'source', 'driving', 'output'])
  return flags.FLAGS


def main(argv) -> int:
  from absl import app, flags
  from absl import logging as absl_logging

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS
  # Orbax logs pages while loading a checkpoint (at INFO, and read-only notices at WARNING):
  # stderr is kept for this module's warnings, errors and the progress bar.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('absl').setLevel(logging.ERROR)
  try:
    summary = reenact(
      FLAGS.workdir,
      FLAGS.source,
      FLAGS.driving,
      FLAGS.output,
      relative=FLAGS.relative,
      find_best_frame=FLAGS.find_best_frame,
      paste_back=FLAGS.paste_back,
      side_by_side=FLAGS.side_by_side,
      step=FLAGS.step,
      batch_size=FLAGS.batch_size,
    )
  except ReenactError as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  written = summary['output'] + (
    f' and {summary["side_by_side"]}' if summary['side_by_side'] else ''
  )
  rendering = (
    f', {summary["render_fps"]:.1f} frames/s rendering after compilation'
    if math.isfinite(summary['render_fps'])
    else ''
  )
  print(
    f'Wrote {written}: {summary["frames"]} frames at {summary["video_fps"]:.2f} fps from '
    f'checkpoint step {summary["step"]}, in {summary["seconds"]:.1f} s '
    f'({summary["fps"]:.1f} frames/s end to end{rendering}).'
  )
  return 0


if __name__ == '__main__':
  from absl import app

  # Defined only when run as a program: the demo imports this module beside its own flags.
  _define_flags()
  app.run(main)
