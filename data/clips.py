"""Per-clip preparation: find the clips, read their frames, track the face, crop, encode.

One clip -> one stable square crop box (the union of the face over the whole clip, with margin,
as the community's crop tools do) -> per frame: the crop resized to the target resolution,
478 landmarks normalised to the crop, the face-oval polygon and the head pose.
"""

import dataclasses
import os
import pathlib
import re
from collections.abc import Iterator

import cv2
import numpy as np

from reenact_jax import face_topology, records

VIDEO_EXTENSIONS = frozenset({'.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg'})
IMAGE_EXTENSIONS = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.webp'})
# Frames kept decoded between the tracking pass and the cropping pass; longer clips are decoded
# twice instead (a 720p clip of a few minutes would not fit in memory).
FRAME_CACHE_BYTES = 768 * 2**20


@dataclasses.dataclass(frozen=True)
class ClipInput:
  """One clip to prepare: a video file or a folder of frames."""

  identity: str
  name: str  # Unique within the dataset: the path below the input folder, without extension.
  path: str
  is_frame_folder: bool


@dataclasses.dataclass(frozen=True)
class Skipped:
  """An input that produced no clip, and why ('kind' is a short category for the summary)."""

  path: str
  kind: str  # 'unsupported', 'unreadable', 'no_face', 'too_short', 'error'
  reason: str


@dataclasses.dataclass(frozen=True)
class Options:
  resolution: int
  face_fraction: float = 0.6  # The clip's face extent over the crop side (see crop_box).
  image_format: str = 'jpeg'
  jpeg_quality: int = 95
  max_frames: int = 0  # 0: every frame.
  min_face_fraction: float = 0.5  # Skip a clip whose face is found on fewer of its frames.


@dataclasses.dataclass
class ClipResult:
  clip: ClipInput
  records: list[bytes]
  frame_indices: list[int]
  num_input_frames: int
  crop_box: tuple[int, int, int]  # x0, y0, side in source pixels
  frame_size: tuple[int, int]  # source height, width
  fps: float


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def _frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
  return sorted(files, key=lambda p: _natural_key(p.name))


def discover(input_path: str | os.PathLike) -> tuple[list[ClipInput], list[Skipped]]:
  """Clips below `input_path` (a video file or a folder), and the files that are not clips.

  Layout: `<identity>/<clip>.mp4`, `<identity>/<clip>/<frames>.png`, or deeper
  (`<identity>/<video>/<utterance>.mp4` as in VoxCeleb2): the identity is the first folder
  below the input, the clip name is the relative path without extension. A video directly in the
  input folder is its own identity; an input folder of frames is one clip.
  """
  root = pathlib.Path(input_path)
  if not root.exists():
    raise FileNotFoundError(f'--input {root} does not exist.')
  if root.is_file():
    if root.suffix.lower() not in VIDEO_EXTENSIONS:
      skipped = Skipped(str(root), 'unsupported', f'unsupported extension {root.suffix!r}')
      return [], [skipped]
    return [ClipInput(root.stem, root.stem, str(root), False)], []
  clips, skipped = [], []
  for folder, subfolders, files in os.walk(root):
    subfolders[:] = sorted(name for name in subfolders if not name.startswith('.'))
    folder = pathlib.Path(folder)
    relative = folder.relative_to(root)
    frames = [f for f in files if pathlib.Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    if frames:
      # A folder of frames is one clip (the input folder itself: one identity of its name).
      identity = relative.parts[0] if relative.parts else root.name
      clip_name = relative.as_posix() if relative.parts else root.name
      clips.append(ClipInput(identity, clip_name, str(folder), True))
    for name in sorted(files, key=_natural_key):
      path = folder / name
      suffix = path.suffix.lower()
      if name.startswith('.') or suffix in IMAGE_EXTENSIONS:
        continue
      if suffix in VIDEO_EXTENSIONS:
        clip_name = (relative / path.stem).as_posix()
        identity = relative.parts[0] if relative.parts else path.stem
        clips.append(ClipInput(identity, clip_name, str(path), False))
      else:
        skipped.append(Skipped(str(path), 'unsupported', f'unsupported extension {suffix!r}'))
  return clips, skipped


class UnreadableInput(Exception):
  """The clip's frames cannot be read (corrupt, truncated, unknown format)."""


def read_frames(clip: ClipInput, max_frames: int = 0) -> Iterator[np.ndarray]:
  """Yields the clip's frames as RGB uint8 (H, W, 3); raises UnreadableInput."""
  count = 0
  if clip.is_frame_folder:
    shape = None
    for path in _frame_files(pathlib.Path(clip.path)):
      image = cv2.imread(str(path), cv2.IMREAD_COLOR)
      if image is None:
        raise UnreadableInput(f'cannot decode frame {path.name}')
      if shape is not None and image.shape != shape:
        raise UnreadableInput(f'frame {path.name} is {image.shape[:2]}, earlier frames {shape[:2]}')
      shape = image.shape
      yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
      count += 1
      if max_frames and count >= max_frames:
        return
    return
  import av

  try:
    container = av.open(clip.path)
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


def video_fps(clip: ClipInput) -> float:
  if clip.is_frame_folder:
    return 0.0
  import av

  try:
    with av.open(clip.path) as container:
      rate = container.streams.video[0].average_rate
      return float(rate) if rate else 0.0
  except (av.FFmpegError, OSError, ValueError, IndexError):
    return 0.0


def crop_box(
  landmarks: np.ndarray, frame_height: int, frame_width: int, face_fraction: float = 0.6
) -> tuple[int, int, int]:
  """One square box (x0, y0, side) in integer pixels bounding the face over a whole clip.

  Args:
    landmarks: (F, N, 3) per-frame landmarks in frame pixels (frames with a face).
    face_fraction: the longer side of the union of the face boxes over the crop side. 0.6 puts a
      still face at the scale of face_topology.canonical_landmarks() (hairline to chin over 60% of
      the crop); a moving face looks smaller in each frame.

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
  """(resolution, resolution, 3) crop of `box`, edge-padded where it leaves the frame."""
  x0, y0, side = box
  height, width = frame.shape[:2]
  pad = (max(0, -y0), max(0, y0 + side - height), max(0, -x0), max(0, x0 + side - width))
  region = frame[max(0, y0) : min(height, y0 + side), max(0, x0) : min(width, x0 + side)]
  if any(pad):
    region = cv2.copyMakeBorder(region, *pad, borderType=cv2.BORDER_REPLICATE)
  interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
  return cv2.resize(region, (resolution, resolution), interpolation=interpolation)


def normalise_landmarks(landmarks: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
  """(..., N, 3) frame-pixel landmarks -> the crop's normalised convention (see records)."""
  x0, y0, side = box
  normalised = np.empty_like(landmarks, dtype=np.float32)
  normalised[..., 0] = 2 * (landmarks[..., 0] - x0) / side - 1
  normalised[..., 1] = 2 * (landmarks[..., 1] - y0) / side - 1
  z = 2 * landmarks[..., 2] / side
  normalised[..., 2] = z - z.mean(axis=-1, keepdims=True)
  return normalised


def similarity_fit(src: np.ndarray, dst: np.ndarray):
  """Umeyama least squares: dst ~ scale * src @ rotation.T + translation, per batch element.

  Args:
    src: (K, 3) reference points; dst: (B, K, 3).
  Returns:
    scale (B,), rotation (B, 3, 3) proper, translation (B, 3).
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  src_mean = src.mean(0)
  dst_mean = dst.mean(1)
  src_c = src - src_mean
  dst_c = dst - dst_mean[:, None]
  covariance = np.einsum('bki,kj->bij', dst_c, src_c) / src.shape[0]
  u, singular, vt = np.linalg.svd(covariance)
  sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
  correction = np.ones_like(singular)
  correction[:, -1] = sign
  rotation = np.einsum('bij,bj,bjk->bik', u, correction, vt)
  scale = (singular * correction).sum(-1) / (src_c**2).sum(-1).mean()
  translation = dst_mean - scale[:, None] * np.einsum('bij,j->bi', rotation, src_mean)
  return scale, rotation, translation


def encode_image(image: np.ndarray, options: Options) -> bytes:
  bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  if options.image_format == 'png':
    ok, encoded = cv2.imencode('.png', bgr)
  else:
    ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
  if not ok:
    raise RuntimeError(f'cv2 could not encode a {image.shape} image as {options.image_format}')
  return encoded.tobytes()


def _track(clip: ClipInput, landmarker, options: Options):
  """Pass 1: per-frame landmarks (or None) and, if they fit in memory, the frames."""
  landmarker.reset()
  found, cached, cached_bytes = [], [], 0
  frame_shape = None
  for frame in read_frames(clip, options.max_frames):
    frame_shape = frame.shape
    found.append(landmarker(frame))
    if cached is not None:
      cached.append(frame)
      cached_bytes += frame.nbytes
      if cached_bytes > FRAME_CACHE_BYTES:
        cached = None
  return found, cached, frame_shape


def process_clip(clip: ClipInput, options: Options, landmarker) -> ClipResult | Skipped:
  """Prepares one clip; a bad input becomes a Skipped with the reason, never an exception."""
  try:
    per_frame, cached, frame_shape = _track(clip, landmarker, options)
  except UnreadableInput as error:
    return Skipped(clip.path, 'unreadable', f'unreadable input: {error}')
  num_frames = len(per_frame)
  if num_frames < 2:
    return Skipped(clip.path, 'too_short', f'clip has {num_frames} frame(s); at least 2 needed')
  kept = [i for i, points in enumerate(per_frame) if points is not None]
  if not kept:
    return Skipped(clip.path, 'no_face', f'no face found in any of its {num_frames} frames')
  if len(kept) < 2 or len(kept) < options.min_face_fraction * num_frames:
    return Skipped(
      clip.path,
      'no_face',
      f'face found in only {len(kept)} of {num_frames} frames '
      f'(needs {options.min_face_fraction:.0%} and at least 2)',
    )
  pixels = np.stack([per_frame[i] for i in kept])  # (F, N, 3)
  height, width = frame_shape[:2]
  box = crop_box(pixels, height, width, options.face_fraction)
  landmarks = normalise_landmarks(pixels, box)
  canonical = face_topology.canonical_landmarks()
  stable = face_topology.STABLE
  scale, rotation, translation = similarity_fit(canonical[stable], landmarks[:, stable])
  polygons = landmarks[:, face_topology.FACE_OVAL, :2]

  frames = cached if cached is not None else read_frames(clip, options.max_frames)
  encoded = []
  position = 0
  try:
    for index, frame in enumerate(frames):
      if position >= len(kept):
        break
      if index != kept[position]:
        continue
      image = crop_frame(frame, box, options.resolution)
      encoded.append(
        records.encode_record(
          image=encode_image(image, options),
          height=options.resolution,
          width=options.resolution,
          landmarks=landmarks[position],
          mask_polygon=polygons[position],
          pose_rotation=rotation[position],
          pose_translation=translation[position],
          pose_scale=scale[position],
          identity=clip.identity,
          clip=clip.name,
          frame_index=index,
        )
      )
      position += 1
  except UnreadableInput as error:
    return Skipped(clip.path, 'unreadable', f'unreadable input on second read: {error}')
  return ClipResult(
    clip=clip,
    records=encoded,
    frame_indices=kept,
    num_input_frames=num_frames,
    crop_box=box,
    frame_size=(height, width),
    fps=video_fps(clip),
  )
