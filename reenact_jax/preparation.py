"""Data preparation: videos -> face crops, 478 landmarks, masks, head poses -> ArrayRecord shards.

The command is `python -m data.prepare`; this module is its library (and the demo's, which
prepares the bundled clip on first use).

Per clip: one stable square crop box (the union of the face over the whole clip, with margin,
as the community's crop tools do) -> per frame: the crop resized to the target resolution,
478 landmarks normalised to the crop, the face-oval polygon, the person matte of the crop and
the head pose. See
reenact_jax/records.py for the record format and the output folder.

Splits are identity-disjoint (a stable hash order picks ~test_fraction of the identities, at
least one when there are two or more). With a single identity the test split is instead the last
test_fraction of each clip's frames. Bad inputs (unreadable or truncated video, no face, fewer
than two frames, unsupported file) are skipped, listed in the manifest with the reason and
counted in the summary; the run goes on.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import pathlib
import time
from collections import Counter

import cv2
import jax
import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordWriter

from reenact_jax import crops, face, face_topology, geometry, media, records

DEFAULT_RECORDS_PER_SHARD = 2000
_PARTIAL_SUFFIX = '.partial'
_STAGING = 'staging'
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
  face_fraction: float = crops.FACE_FRACTION  # The face extent over the crop side.
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


def discover(input_path: str | os.PathLike) -> tuple[list[ClipInput], list[Skipped]]:
  """Clips below `input_path` (a video file or a folder), and the files that are not clips.

  Layout: `<identity>/<clip>.mp4`, `<identity>/<clip>/<frames>.png`, or deeper
  (`<identity>/<video>/<utterance>.mp4` as in VoxCeleb2): the identity is the first folder
  below the input, the clip name is the relative path without extension. A video directly in the
  input folder is its own identity; an input folder of frames is one clip.
  """
  root = pathlib.Path(input_path)
  if not root.exists():
    raise FileNotFoundError(f'{root} does not exist.')
  if root.is_file():
    if not media.is_video(root):
      skipped = Skipped(str(root), 'unsupported', f'unsupported extension {root.suffix!r}')
      return [], [skipped]
    return [ClipInput(root.stem, root.stem, str(root), False)], []
  clips, skipped = [], []
  for folder, subfolders, files in os.walk(root):
    subfolders[:] = sorted(name for name in subfolders if not name.startswith('.'))
    folder = pathlib.Path(folder)
    relative = folder.relative_to(root)
    frames = [f for f in files if pathlib.Path(f).suffix.lower() in media.IMAGE_EXTENSIONS]
    if frames:
      # A folder of frames is one clip (the input folder itself: one identity of its name).
      identity = relative.parts[0] if relative.parts else root.name
      clip_name = relative.as_posix() if relative.parts else root.name
      clips.append(ClipInput(identity, clip_name, str(folder), True))
    for name in sorted(files, key=media.natural_key):
      path = folder / name
      suffix = path.suffix.lower()
      if name.startswith('.') or suffix in media.IMAGE_EXTENSIONS:
        continue
      if suffix in media.VIDEO_EXTENSIONS:
        clip_name = (relative / path.stem).as_posix()
        identity = relative.parts[0] if relative.parts else path.stem
        clips.append(ClipInput(identity, clip_name, str(path), False))
      else:
        skipped.append(Skipped(str(path), 'unsupported', f'unsupported extension {suffix!r}'))
  return clips, skipped


@functools.cache
def _head_pose_fn():
  """geometry.head_pose of the canonical face, compiled once per clip length."""
  canonical = np.asarray(face_topology.canonical_landmarks(), np.float32)
  return jax.jit(lambda landmarks: geometry.head_pose(landmarks, canonical, face_topology.STABLE))


def head_pose(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per frame, the similarity mapping the canonical face onto (F, N, 3) normalised landmarks:
  scale (F,), rotation (F, 3, 3), translation (F, 3) as float32 numpy arrays."""
  return tuple(np.asarray(x) for x in _head_pose_fn()(np.asarray(landmarks, np.float32)))


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
  for frame in media.read_frames(clip.path, options.max_frames):
    frame_shape = frame.shape
    found.append(landmarker(frame))
    if cached is not None:
      cached.append(frame)
      cached_bytes += frame.nbytes
      if cached_bytes > FRAME_CACHE_BYTES:
        cached = None
  return found, cached, frame_shape


def encode_matte(matte: np.ndarray) -> bytes:
  """(H, W) float matte in [0, 1] -> PNG bytes of its uint8 image."""
  ok, encoded = cv2.imencode('.png', np.round(np.clip(matte, 0.0, 1.0) * 255).astype(np.uint8))
  if not ok:
    raise RuntimeError(f'cv2 could not encode a {matte.shape} matte as PNG')
  return encoded.tobytes()


def process_clip(clip: ClipInput, options: Options, landmarker, segmenter) -> ClipResult | Skipped:
  """Prepares one clip; a bad input becomes a Skipped with the reason, never an exception.

  `landmarker` is a face.FaceLandmarker, `segmenter` a face.PersonSegmenter (run on each crop).
  """
  try:
    per_frame, cached, frame_shape = _track(clip, landmarker, options)
  except media.UnreadableInput as error:
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
  box = crops.crop_box(pixels, height, width, options.face_fraction)
  landmarks = crops.normalise_landmarks(pixels, box)
  scale, rotation, translation = head_pose(landmarks)
  polygons = landmarks[:, face_topology.FACE_OVAL, :2]

  frames = cached if cached is not None else media.read_frames(clip.path, options.max_frames)
  encoded = []
  position = 0
  try:
    for index, frame in enumerate(frames):
      if position >= len(kept):
        break
      if index != kept[position]:
        continue
      image = crops.crop_frame(frame, box, options.resolution)
      encoded.append(
        records.encode_record(
          image=encode_image(image, options),
          matte=encode_matte(segmenter(image)),
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
  except media.UnreadableInput as error:
    return Skipped(clip.path, 'unreadable', f'unreadable input on second read: {error}')
  return ClipResult(
    clip=clip,
    records=encoded,
    frame_indices=kept,
    num_input_frames=num_frames,
    crop_box=box,
    frame_size=(height, width),
    fps=media.video_fps(clip.path),
  )


_FACE_MODELS = None  # One per process (the TFLite interpreters are not picklable).


class OutputNotEmpty(Exception):
  pass


def _face_models() -> tuple[face.FaceLandmarker, face.PersonSegmenter]:
  global _FACE_MODELS
  if _FACE_MODELS is None:
    _FACE_MODELS = face.FaceLandmarker(), face.PersonSegmenter()
  return _FACE_MODELS


def _process(job: tuple[ClipInput, Options]):
  clip, options = job
  try:
    return process_clip(clip, options, *_face_models())
  except Exception as error:  # A bug or an odd input must not end a long run silently.
    logging.exception('Preparing %s failed', clip.path)
    return Skipped(clip.path, 'error', f'{type(error).__name__}: {error}')


def test_identities(identities: list[str], test_fraction: float) -> set[str]:
  """Identities of the test split: a stable hash order, ~test_fraction of them (>= 1 of >= 2)."""
  if len(identities) < 2 or test_fraction <= 0:
    return set()
  count = min(len(identities) - 1, max(1, round(test_fraction * len(identities))))
  order = sorted(identities, key=lambda name: hashlib.sha1(name.encode()).hexdigest())
  return set(order[:count])


def tail_test_frames(num_frames: int, test_fraction: float) -> int:
  """How many of a clip's last frames are held out when there is a single identity."""
  if test_fraction <= 0 or num_frames < 4:
    return 0
  return min(num_frames - 2, max(2, math.ceil(test_fraction * num_frames)))


class ShardWriter:
  """Writes one split's records, rolling over to a new shard every `records_per_shard`."""

  def __init__(self, output: pathlib.Path, split: str, records_per_shard: int):
    self.output = output
    self.split = split
    self.records_per_shard = records_per_shard
    self.shard_records: list[int] = []
    self._writer = None

  @property
  def num_records(self) -> int:
    return sum(self.shard_records)

  def _partial(self, number: int) -> pathlib.Path:
    return self.output / f'{self.split}.array_record-{number:05d}{_PARTIAL_SUFFIX}'

  def write(self, record: bytes) -> None:
    if self._writer is None or self.shard_records[-1] >= self.records_per_shard:
      self._close_current()
      # group_size:1 keeps every record individually addressable for fast random access.
      path = self._partial(len(self.shard_records))
      self._writer = ArrayRecordWriter(str(path), 'group_size:1')
      self.shard_records.append(0)
    self._writer.write(record)
    self.shard_records[-1] += 1

  def _close_current(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def finish(self) -> list[str]:
    """Closes the last shard and gives every shard its final `-of-N` name."""
    self._close_current()
    names = []
    for number in range(len(self.shard_records)):
      name = records.shard_name(self.split, number, len(self.shard_records))
      self._partial(number).replace(self.output / name)
      names.append(name)
    return names


def _prepare_output(output: pathlib.Path, overwrite: bool) -> None:
  output.mkdir(parents=True, exist_ok=True)
  existing = [
    path
    for path in output.iterdir()
    if '.array_record-' in path.name or path.name in (records.MANIFEST, records.CLIP_INDEX)
  ]
  if existing and not overwrite:
    raise OutputNotEmpty(
      f'{output} already holds prepared data ({existing[0].name}, ...). Choose another --output, '
      'or pass --overwrite to replace it.'
    )
  for path in existing:
    path.unlink()


def prepare(
  input_path: str | pathlib.Path,
  output: str | pathlib.Path,
  *,
  resolution: int,
  workers: int = 1,
  test_fraction: float = 0.1,
  overwrite: bool = False,
  records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
  options: Options | None = None,
) -> dict:
  """Prepares `input_path` into `output`; returns the manifest (also written as manifest.json).

  Raises:
    FileNotFoundError: the input does not exist.
    OutputNotEmpty: `output` holds shards or a manifest and overwrite is False.
  """
  start = time.perf_counter()
  output = pathlib.Path(output)
  options = options or Options(resolution=resolution)
  options = dataclasses.replace(options, resolution=resolution)
  inputs, skipped = discover(input_path)
  _prepare_output(output, overwrite)

  # Records go to staging shards first: which identities are held out is decided only once
  # every clip is done, so that a skipped clip never leaves a split empty.
  staging = ShardWriter(output, _STAGING, records_per_shard)
  staged = []  # (ClipResult without records, first staging index)

  def add(result: ClipResult) -> None:
    first = staging.num_records
    for record in result.records:
      staging.write(record)
    staged.append((dataclasses.replace(result, records=[]), first, len(result.records)))

  jobs = [(clip, options) for clip in inputs]
  if workers > 1 and len(jobs) > 1:
    context = multiprocessing.get_context('spawn')
    with context.Pool(min(workers, len(jobs))) as pool:
      # Ordered results keep the output identical whatever the number of workers.
      for result in pool.imap(_process, jobs):
        _collect(result, add, skipped)
  else:
    for job in jobs:
      _collect(_process(job), add, skipped)
  staging.finish()

  identities = sorted({result.clip.identity for result, _, _ in staged})
  single_identity = len(identities) == 1
  held_out = test_identities(identities, test_fraction)
  writers = {split: ShardWriter(output, split, records_per_shard) for split in records.SPLITS}
  index = {split: [] for split in records.SPLITS}
  kept_clips = []
  staging_paths = records.split_shards(output, _STAGING)
  sources = [str(path) for path in staging_paths]
  with ArrayRecordDataSource(sources) if staged else contextlib.nullcontext() as staged_source:
    for result, first, count in staged:
      clip = result.clip
      tail = tail_test_frames(count, test_fraction) if single_identity else 0
      if clip.identity in held_out:
        parts = {'test': (0, count)}
      else:
        parts = {'train': (0, count - tail)}
        if tail:
          parts['test'] = (count - tail, count)
      for split, (begin, end) in parts.items():
        writer = writers[split]
        index[split].append(
          {
            'identity': clip.identity,
            'clip': clip.name,
            'first': writer.num_records,
            'num_frames': end - begin,
            'first_frame_index': result.frame_indices[begin],
          }
        )
        for number in range(first + begin, first + end):
          writer.write(staged_source[number])
      kept_clips.append(
        {
          'identity': clip.identity,
          'clip': clip.name,
          'path': clip.path,
          'splits': {split: end - begin for split, (begin, end) in parts.items()},
          'num_input_frames': result.num_input_frames,
          'num_frames': count,
          'frames_without_face': result.num_input_frames - count,
          'crop_box': {
            'x0': result.crop_box[0],
            'y0': result.crop_box[1],
            'side': result.crop_box[2],
          },
          'frame_size': list(result.frame_size),
          'fps': result.fps,
        }
      )
  for path in staging_paths:
    path.unlink()

  shard_names = {split: writer.finish() for split, writer in writers.items()}
  clip_index = {
    'format_version': records.FORMAT_VERSION,
    'splits': {
      split: {
        'num_records': writers[split].num_records,
        'shard_records': writers[split].shard_records,
        'shards': shard_names[split],
        'clips': index[split],
      }
      for split in records.SPLITS
    },
  }
  _write_json(output / records.CLIP_INDEX, clip_index)
  seconds = time.perf_counter() - start
  num_frames = sum(clip['num_frames'] for clip in kept_clips)
  manifest = {
    'format_version': records.FORMAT_VERSION,
    'input': str(input_path),
    'resolution': resolution,
    'num_landmarks': face.NUM_LANDMARKS,
    'image_format': options.image_format,
    'face_fraction': options.face_fraction,
    'test_fraction': test_fraction,
    'split_mode': 'clip_tail' if single_identity else 'identity',
    'num_clips': len(kept_clips),
    'num_frames': num_frames,
    'num_input_frames': sum(clip['num_input_frames'] for clip in kept_clips),
    'num_identities': len({clip['identity'] for clip in kept_clips}),
    'identities': sorted({clip['identity'] for clip in kept_clips}),
    'splits': {
      split: {
        'clips': len(index[split]),
        'frames': writers[split].num_records,
        'identities': len({entry['identity'] for entry in index[split]}),
        'shards': shard_names[split],
      }
      for split in records.SPLITS
    },
    'clips': kept_clips,
    'num_skipped': len(skipped),
    'skipped_counts': dict(Counter(item.kind for item in skipped)),
    'skipped': [dataclasses.asdict(item) for item in skipped],
    'seconds': round(seconds, 3),
    'frames_per_sec': round(num_frames / seconds, 2) if seconds > 0 else None,
  }
  # The manifest is written last: its presence marks a finished preparation.
  _write_json(output / records.MANIFEST, manifest)
  return manifest


def _collect(result, add, skipped) -> None:
  if isinstance(result, Skipped):
    logging.warning('Skipped %s: %s', result.path, result.reason)
    skipped.append(result)
  else:
    add(result)


def _write_json(path: pathlib.Path, value) -> None:
  partial = path.with_name(path.name + _PARTIAL_SUFFIX)
  partial.write_text(json.dumps(value, indent=1) + '\n')
  partial.replace(path)


def summary(manifest: dict) -> str:
  """A few human-readable lines about a preparation."""
  lines = [
    f'Prepared {manifest["num_clips"]} clips, {manifest["num_frames"]} frames '
    f'({manifest["num_input_frames"]} read), {manifest["num_identities"]} identities at '
    f'{manifest["resolution"]}x{manifest["resolution"]} in {manifest["seconds"]:.1f} s '
    f'({manifest["frames_per_sec"]} frames/s).'
  ]
  for split, counts in manifest['splits'].items():
    lines.append(
      f'  {split}: {counts["clips"]} clips, {counts["frames"]} frames, '
      f'{counts["identities"]} identities, {len(counts["shards"])} shards'
    )
  kinds = ', '.join(f'{n} {kind}' for kind, n in sorted(manifest['skipped_counts'].items()))
  lines.append(f'Skipped {manifest["num_skipped"]} inputs' + (f' ({kinds}):' if kinds else '.'))
  lines += [f'  {item["path"]}: {item["reason"]}' for item in manifest['skipped']]
  return '\n'.join(lines)
