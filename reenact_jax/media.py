"""Images and videos in and out: decoding with size checks, frame folders, H.264 writing.

Used by data preparation, reenactment and the demo alike. Frames are RGB uint8 (H, W, 3).
Errors a user can cause (a missing, corrupt or too large file) raise `InputError` whose message
names the file and what to do; callers add which input (flag) it was.
"""

import dataclasses
import fractions
import os
import pathlib
import re
from collections.abc import Iterable, Iterator

import av
import cv2
import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

VIDEO_EXTENSIONS = frozenset({'.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg'})
IMAGE_EXTENSIONS = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.webp'})
OUTPUT_SUFFIXES = ('.mp4', '.mov', '.mkv')
# Decoding a larger image or frame needs gigabytes; refuse it before decoding.
MAX_PIXELS = 50_000_000
DEFAULT_FPS = fractions.Fraction(25)


class InputError(ValueError):
  """A bad input file: the message names it and what to do."""


class UnreadableInput(InputError):
  """A video or frame folder whose frames cannot be read (corrupt, truncated, unknown format)."""


def natural_key(name: str) -> list:
  """Sort key that orders 'frame2' before 'frame10'."""
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The image files of a frame folder, in natural order."""
  files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
  return sorted(files, key=lambda p: natural_key(p.name))


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """The image at `path` as RGB uint8 (H, W, 3), EXIF orientation applied.

  Raises InputError for a missing, undecodable or too large (> max_pixels) image; the size is
  read from the header before any pixel is decoded.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(f'{path} does not exist or is not a file.')
  try:
    with Image.open(path) as image:  # Reads the header only.
      width, height = image.size
      if width * height > max_pixels:
        raise InputError(
          f'{path} is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the '
          f'{max_pixels / 1e6:.0f} megapixel limit. Downscale it first.'
        )
      image.load()
      image = ImageOps.exif_transpose(image).convert('RGB')
      return np.asarray(image, dtype=np.uint8)
  except InputError:
    raise
  except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
    raise InputError(
      f'{path} is not a readable image ({type(error).__name__}: {error}). Use a JPEG or PNG.'
    ) from error


def is_video(path: str | os.PathLike) -> bool:
  return pathlib.Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  width: int
  height: int
  fps: fractions.Fraction
  declared_frames: int  # 0 when the container does not say.
  has_audio: bool


def probe_video(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> VideoInfo:
  """Size, frame rate, frame count and audio presence of a video, without decoding frames."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(f'{path} does not exist or is not a file.')
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise InputError(f'{path} has no video stream.')
      stream = container.streams.video[0]
      width, height = stream.codec_context.width, stream.codec_context.height
      rate = stream.average_rate or stream.guessed_rate
      declared = stream.frames or 0
      has_audio = bool(container.streams.audio)
  except InputError:
    raise
  except (av.FFmpegError, OSError, ValueError) as error:
    raise InputError(
      f'{path} is not a readable video ({error}). Use an MP4/MOV/MKV/AVI file.'
    ) from error
  if width * height > max_pixels:
    raise InputError(
      f'{path} frames are {width}x{height}, over the {max_pixels / 1e6:.0f} megapixel limit. '
      'Downscale the video first.'
    )
  if rate:
    fps = fractions.Fraction(rate).limit_denominator(100_000)
  else:
    logging.warning('%s does not declare its frame rate; writing at %s fps.', path, DEFAULT_FPS)
    fps = DEFAULT_FPS
  return VideoInfo(width, height, fps, int(declared), has_audio)


def read_frames(path: str | os.PathLike, max_frames: int = 0) -> Iterator[np.ndarray]:
  """The frames of a video file or of a folder of images, RGB uint8 (H, W, 3), in order.

  Raises UnreadableInput when the frames cannot be read (also mid-way: corrupt or truncated).
  """
  path = pathlib.Path(path)
  count = 0
  if path.is_dir():
    shape = None
    for file in frame_files(path):
      image = cv2.imread(str(file), cv2.IMREAD_COLOR)
      if image is None:
        raise UnreadableInput(f'cannot decode frame {file.name}')
      if shape is not None and image.shape != shape:
        raise UnreadableInput(f'frame {file.name} is {image.shape[:2]}, earlier frames {shape[:2]}')
      shape = image.shape
      yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
      count += 1
      if max_frames and count >= max_frames:
        return
    return
  try:
    container = av.open(str(path))
  except (av.FFmpegError, OSError, ValueError) as error:
    raise UnreadableInput(f'cannot open video: {error}') from error
  with container:
    if not container.streams.video:
      raise UnreadableInput('no video stream')
    stream = container.streams.video[0]
    declared = stream.frames
    try:
      for frame in container.decode(stream):
        yield frame.to_ndarray(format='rgb24')
        count += 1
        if max_frames and count >= max_frames:
          return
    except (av.FFmpegError, OSError, ValueError) as error:
      raise UnreadableInput(f'decoding failed after {count} frames: {error}') from error
    # A file cut short often decodes without error but stops early.
    if declared and count < declared - 2:
      raise UnreadableInput(f'truncated: decoded {count} of the {declared} frames it declares')


def video_fps(path: str | os.PathLike) -> float:
  """The average frame rate of a video (0.0 for a frame folder or when it does not say)."""
  if pathlib.Path(path).is_dir():
    return 0.0
  try:
    with av.open(str(path)) as container:
      rate = container.streams.video[0].average_rate
      return float(rate) if rate else 0.0
  except (av.FFmpegError, OSError, ValueError, IndexError):
    return 0.0


def check_output(path: str | os.PathLike) -> pathlib.Path:
  """Fails early (before any model work) when `path` cannot be written as a video."""
  path = pathlib.Path(path)
  if path.suffix.lower() not in OUTPUT_SUFFIXES:
    raise InputError(f'{path}: use one of the extensions {", ".join(OUTPUT_SUFFIXES)} (H.264).')
  if path.is_dir():
    raise InputError(f'{path} is a folder; give a file name such as {path}/out.mp4.')
  parent = path.parent if str(path.parent) else pathlib.Path('.')
  if not parent.is_dir():
    raise InputError(f'{path}: the folder {parent} does not exist. Create it first.')
  if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
    raise InputError(f'{path} cannot be written (permission denied).')
  return path


def frame_signature(frame: np.ndarray, bins: int = 8) -> np.ndarray:
  """(bins**3,) float32 colour histogram of an RGB uint8 frame, summing to 1 (for cut detection)."""
  small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
  histogram = cv2.calcHist([small], [0, 1, 2], None, [bins] * 3, [0, 256] * 3).reshape(-1)
  return (histogram / max(float(histogram.sum()), 1.0)).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Float image(s) in [0, 1] -> uint8, rounded."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


class VideoWriter:
  """H.264 (yuv420p) video writer; the file appears at `path` only when closed successfully.

  4:2:0 chroma needs even sizes: an odd height or width gets one replicated row or column (so a
  pasted-back portrait of odd size comes out one pixel larger). `audio_from`: a video whose
  first audio stream is copied into the output (re-encoded as AAC), cut to the video's length.
  """

  def __init__(
    self,
    path: str | os.PathLike,
    fps: fractions.Fraction,
    height: int,
    width: int,
    *,
    audio_from: str | os.PathLike | None = None,
  ):
    self.path = pathlib.Path(path)
    # Same folder (an atomic rename), same suffix (the container format follows it).
    self._partial = self.path.with_name(
      f'.{self.path.stem}.partial-{os.getpid()}{self.path.suffix}'
    )
    self.height, self.width = height, width
    self.fps = fps
    self._audio_from = audio_from
    self._container = av.open(str(self._partial), mode='w')
    self._stream = self._container.add_stream('libx264', rate=fps)
    self._stream.height = height + height % 2
    self._stream.width = width + width % 2
    self._stream.pix_fmt = 'yuv420p'
    self._stream.options = {'crf': '18', 'preset': 'fast'}
    self._audio_stream = None
    if audio_from is not None:
      with av.open(str(audio_from)) as source:
        if source.streams.audio:
          rate = source.streams.audio[0].codec_context.sample_rate or 44100
          self._audio_stream = self._container.add_stream('aac', rate=rate)
          self._audio_stream.layout = 'stereo'
    self.frames = 0

  def write(self, frame: np.ndarray) -> None:
    """One RGB uint8 frame (H, W, 3)."""
    if frame.shape != (self.height, self.width, 3):
      raise ValueError(f'frame {frame.shape} != {(self.height, self.width, 3)}')
    pad = ((0, self.height % 2), (0, self.width % 2), (0, 0))
    if any(p[1] for p in pad):
      frame = np.pad(frame, pad, mode='edge')
    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')
    self._container.mux(self._stream.encode(video_frame))
    self.frames += 1

  def _copy_audio(self) -> None:
    """Re-encodes the source's audio up to the video's duration into the output."""
    duration = self.frames / float(self.fps)
    with av.open(str(self._audio_from)) as source:
      if not source.streams.audio:
        return
      stream = source.streams.audio[0]
      resampler = av.AudioResampler(
        format='fltp', layout='stereo', rate=self._audio_stream.codec_context.sample_rate
      )
      for frame in source.decode(stream):
        if frame.time is not None and frame.time >= duration:
          break
        frame.pts = None
        for resampled in resampler.resample(frame):
          self._container.mux(self._audio_stream.encode(resampled))
      for resampled in resampler.resample(None):
        self._container.mux(self._audio_stream.encode(resampled))
      self._container.mux(self._audio_stream.encode(None))

  def close(self) -> None:
    self._container.mux(self._stream.encode(None))
    if self._audio_stream is not None:
      self._copy_audio()
    self._container.close()
    self._partial.replace(self.path)

  def abort(self) -> None:
    try:
      self._container.close()
    except Exception:  # Already broken: the partial file is removed either way.
      pass
    self._partial.unlink(missing_ok=True)


def batched(items: Iterable, size: int) -> Iterator[list]:
  """Consecutive lists of `size` items (the last one shorter)."""
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch
