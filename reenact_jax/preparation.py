"""Data preparation: videos -> face crops, 478 landmarks, masks, head poses -> ArrayRecord shards.

The command is `python -m data.prepare`; this module is its library (and the demo's, which
prepares the bundled clip on first use).

Per clip: one stable square crop box (the union of the face over the whole clip, with margin, as
the community's crop tools do) -> per frame: the crop resized to the target resolution, 478
landmarks normalised to the crop, the face-oval polygon, the person matte of the crop and the
head pose. See reenact_jax/records.py for the record format and the output folder.

Which clips the input holds, whose they are and the dataset's own split: dataset_layouts.py.
Without a split of the dataset's own (or with split='by_identity'), splits are identity-disjoint
(a stable hash order picks ~test_fraction of the identities, at least one when there are two or
more); with a single identity the test split is instead the last test_fraction of each clip's
frames. A killed preparation resumes (see the stages below). Bad inputs (unreadable or truncated
video, no face, fewer than two frames, unsupported file) are skipped, listed in the manifest
with the reason and counted in the summary; the run goes on.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import pathlib
import sys
import tempfile
import time
from collections import Counter

import cv2
import jax
import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath
from tqdm import tqdm

from reenact_jax import crops, dataset_layouts, face, face_topology, geometry, media, records
from reenact_jax.dataset_layouts import ClipInput, Skipped

DEFAULT_RECORDS_PER_SHARD = 2000
_PARTIAL_SUFFIX = '.partial'
# Frames kept decoded between the tracking pass and the cropping pass; longer clips are decoded
# twice instead (a 720p clip of a few minutes would not fit in memory).
FRAME_CACHE_BYTES = 768 * 2**20


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


class OutputNotEmpty(Exception):
  """The output folder holds a finished preparation, or an unfinished one with other settings."""


_FACE_MODELS = None  # One per process (the TFLite interpreters are not picklable).


def _face_models() -> tuple[face.FaceLandmarker, face.PersonSegmenter]:
  global _FACE_MODELS
  if _FACE_MODELS is None:
    _FACE_MODELS = face.FaceLandmarker(), face.PersonSegmenter()
  return _FACE_MODELS


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


# --- The output folder and its progress ------------------------------------------------------
#
# A preparation runs in three stages, the same on one machine (`prepare`) and on Apache Beam
# (reenact_jax/preparation_beam.py):
#   1. per clip, `prepare_clip` commits the clip's records (progress/<key>.array_record) and then
#      its done-record (progress/<key>.json, the clip's metadata or why it was skipped); a clip
#      with a done-record is never prepared again, so a killed run resumes where it stopped;
#   2. `plan` assigns the splits once every clip is done (a skipped clip must never leave a split
#      empty) and cuts each split into shards of `records_per_shard` records;
#   3. `write_shard` writes each shard from the clips' progress files, and `finish` writes the
#      clip index, the tfds metadata and, last, the manifest, whose presence marks a finished
#      preparation, then removes progress/.
# Paths go through etils.epath, so --output may be a gs:// bucket (with the 'gcs' extra);
# ArrayRecord files are written and read through a local copy there.

PROGRESS = 'progress'
_SETTINGS = 'settings.json'
TFDS_FILES = ('dataset_info.json', 'features.json')
TFDS_NAME = 'reenact_frames'


def settings(
  input_path,
  options: Options,
  *,
  layout: str,
  split: str,
  test_fraction: float,
  records_per_shard: int,
) -> dict:
  """Everything that decides the output: a rerun resumes only with the same settings."""
  return {
    'format_version': records.FORMAT_VERSION,
    'input': str(input_path),
    'options': dataclasses.asdict(options),
    'layout': layout,
    'split': split,
    'test_fraction': test_fraction,
    'records_per_shard': records_per_shard,
  }


def _is_local(path: epath.Path) -> bool:
  return '://' not in str(path)


@contextlib.contextmanager
def _written_locally(target: epath.Path):
  """A local path to write `target` at; published atomically when the block ends."""
  partial = target.parent / (target.name + _PARTIAL_SUFFIX)
  if _is_local(target):
    yield pathlib.Path(partial)
    partial.replace(target)
    return
  with tempfile.TemporaryDirectory() as scratch:
    local = pathlib.Path(scratch) / target.name
    yield local
    epath.Path(local).copy(target, overwrite=True)  # One object upload: whole or nothing.


@contextlib.contextmanager
def _read_locally(path: epath.Path):
  if _is_local(path):
    yield pathlib.Path(path)
    return
  with tempfile.TemporaryDirectory() as scratch:
    local = pathlib.Path(scratch) / path.name
    path.copy(local)
    yield local


def _write_json(path, value) -> None:
  path = epath.Path(path)
  with _written_locally(path) as local:
    local.write_text(json.dumps(value, indent=1) + '\n')


def _prepared_files(output: epath.Path) -> list[epath.Path]:
  return [
    path
    for path in output.iterdir()
    if '.array_record-' in path.name
    or path.name in (records.MANIFEST, records.CLIP_INDEX, *TFDS_FILES)
  ]


def start_output(output, run_settings: dict, overwrite: bool) -> epath.Path:
  """Makes `output` ready for (or resumes) a preparation with `run_settings`; its progress folder.

  Raises:
    OutputNotEmpty: `output` holds a finished preparation, or an unfinished one with other
      settings, and overwrite is False.
  """
  output = epath.Path(output)
  progress = output / PROGRESS
  output.mkdir(parents=True, exist_ok=True)
  if overwrite:
    for path in _prepared_files(output):
      path.unlink()
    if progress.exists():
      progress.rmtree()
  elif (output / records.MANIFEST).exists():
    raise OutputNotEmpty(
      f'{output} already holds a finished preparation ({records.MANIFEST}). Choose another '
      '--output, or pass --overwrite to replace it.'
    )
  saved = progress / _SETTINGS
  if saved.exists():
    previous = json.loads(saved.read_text())
    if previous != run_settings:
      before, after = _flat_settings(previous), _flat_settings(run_settings)
      changed = sorted(key for key in {**before, **after} if before.get(key) != after.get(key))
      raise OutputNotEmpty(
        f'{output} holds an unfinished preparation with other settings ({", ".join(changed)}). '
        'Rerun it with the same settings to resume it, or pass --overwrite to start again.'
      )
  elif _prepared_files(output):
    raise OutputNotEmpty(
      f'{output} already holds prepared data ({_prepared_files(output)[0].name}, ...). Choose '
      'another --output, or pass --overwrite to replace it.'
    )
  else:
    progress.mkdir(exist_ok=True)
    _write_json(saved, run_settings)
  return progress


def _flat_settings(values: dict) -> dict:
  """{'options': {'resolution': 16}} -> {'resolution': 16}: the names the command's flags use."""
  flat = {}
  for key, value in values.items():
    flat.update(value if isinstance(value, dict) else {key: value})
  return flat


def clip_key(clip: ClipInput) -> str:
  """The clip's file name in the progress folder (its name may hold '/' and '#')."""
  return hashlib.sha1(clip.name.encode()).hexdigest()[:24]


def prepare_clip(clip: ClipInput, options: Options, progress) -> dict:
  """Prepares one clip into `progress` once; returns its done-record.

  The done-record is a dict: 'clip' (the ClipInput as a dict) and either 'skipped' (a Skipped as
  a dict) or the clip's 'num_frames', 'frame_indices', 'num_input_frames', 'crop_box',
  'frame_size' and 'fps'. A bad input or a bug becomes a skipped clip, never an exception.
  """
  progress = epath.Path(progress)
  done = progress / f'{clip_key(clip)}.json'
  if done.exists():
    return json.loads(done.read_text())
  try:
    with _read_locally(epath.Path(clip.path)) as local:  # A gs:// clip: a local copy.
      result = process_clip(dataclasses.replace(clip, path=str(local)), options, *_face_models())
    if isinstance(result, Skipped):
      result = dataclasses.replace(result, path=clip.path)
  except Exception as error:  # A bug or an odd input must not end a long run silently.
    logging.exception('Preparing %s failed', clip.path)
    result = Skipped(clip.path, 'error', f'{type(error).__name__}: {error}')
  outcome = {'clip': dataclasses.asdict(clip)}
  if isinstance(result, Skipped):
    outcome['skipped'] = dataclasses.asdict(result)
  else:
    with _written_locally(progress / f'{clip_key(clip)}.array_record') as local:
      # group_size:1 keeps every record individually addressable for fast random access.
      writer = ArrayRecordWriter(str(local), 'group_size:1')
      for record in result.records:
        writer.write(record)
      writer.close()
    outcome.update(
      num_frames=len(result.records),
      frame_indices=result.frame_indices,
      num_input_frames=result.num_input_frames,
      crop_box=list(result.crop_box),
      frame_size=list(result.frame_size),
      fps=result.fps,
    )
  _write_json(done, outcome)
  return outcome


@dataclasses.dataclass(frozen=True)
class ShardJob:
  """One output shard: records [begin, end) of each listed clip's progress file, in order."""

  name: str
  pieces: tuple[tuple[str, int, int], ...]  # (clip key, begin, end)


@dataclasses.dataclass(frozen=True)
class Plan:
  shards: tuple[ShardJob, ...]
  clip_index: dict
  manifest: dict  # Without the timing, which `finish` adds.


def _split_source(kept: list[dict], split: str, num_identities: int) -> str:
  # The dataset's own split, when every clip has one and both splits have clips (an input of
  # one split's folder alone would leave nothing to evaluate on).
  if split == 'keep' and {o['clip']['split'] for o in kept} == set(records.SPLITS):
    return 'input'
  return 'identity' if num_identities > 1 else 'clip_tail'


def plan(outcomes: list[dict], skipped: list[Skipped], run_settings: dict) -> Plan:
  """The splits, the shards and the index of a preparation whose clips are all done.

  `outcomes` are the clips' done-records in discovery order; `skipped` the inputs that were not
  clips at all.
  """
  test_fraction = run_settings['test_fraction']
  records_per_shard = run_settings['records_per_shard']
  skipped = [*skipped, *(Skipped(**o['skipped']) for o in outcomes if 'skipped' in o)]
  kept = [o for o in outcomes if 'skipped' not in o]
  identities = sorted({o['clip']['identity'] for o in kept})
  split_source = _split_source(kept, run_settings['split'], len(identities))
  held_out = test_identities(identities, test_fraction) if split_source == 'identity' else set()

  pieces = {split: [] for split in records.SPLITS}  # (key, begin, end) in record order
  index = {split: [] for split in records.SPLITS}
  num_records = dict.fromkeys(records.SPLITS, 0)
  kept_clips = []
  for outcome in kept:
    clip = ClipInput(**outcome['clip'])
    count = outcome['num_frames']
    if split_source == 'input':
      parts = {clip.split: (0, count)}
    elif clip.identity in held_out:
      parts = {'test': (0, count)}
    else:
      tail = tail_test_frames(count, test_fraction) if split_source == 'clip_tail' else 0
      parts = {'train': (0, count - tail)}
      if tail:
        parts['test'] = (count - tail, count)
    for split, (begin, end) in parts.items():
      index[split].append(
        {
          'identity': clip.identity,
          'clip': clip.name,
          'first': num_records[split],
          'num_frames': end - begin,
          'first_frame_index': outcome['frame_indices'][begin],
        }
      )
      pieces[split].append((clip_key(clip), begin, end))
      num_records[split] += end - begin
    x0, y0, side = outcome['crop_box']
    kept_clips.append(
      {
        'identity': clip.identity,
        'clip': clip.name,
        'path': clip.path,
        'splits': {split: end - begin for split, (begin, end) in parts.items()},
        'num_input_frames': outcome['num_input_frames'],
        'num_frames': count,
        'frames_without_face': outcome['num_input_frames'] - count,
        'crop_box': {'x0': x0, 'y0': y0, 'side': side},
        'frame_size': outcome['frame_size'],
        'fps': outcome['fps'],
      }
    )

  shards, shard_names, shard_records = [], {}, {}
  for split in records.SPLITS:
    cuts = _cut(pieces[split], records_per_shard)
    shard_names[split] = [records.shard_name(split, n, len(cuts)) for n in range(len(cuts))]
    shard_records[split] = [sum(end - begin for _, begin, end in cut) for cut in cuts]
    shards += [
      ShardJob(name, tuple(cut)) for name, cut in zip(shard_names[split], cuts, strict=True)
    ]

  clip_index = {
    'format_version': records.FORMAT_VERSION,
    'splits': {
      split: {
        'num_records': num_records[split],
        'shard_records': shard_records[split],
        'shards': shard_names[split],
        'clips': index[split],
      }
      for split in records.SPLITS
    },
  }
  split_identities = {split: {e['identity'] for e in index[split]} for split in records.SPLITS}
  manifest = {
    'format_version': records.FORMAT_VERSION,
    'input': run_settings['input'],
    'layout': run_settings['layout'],
    'resolution': run_settings['options']['resolution'],
    'num_landmarks': face.NUM_LANDMARKS,
    'image_format': run_settings['options']['image_format'],
    'face_fraction': run_settings['options']['face_fraction'],
    'test_fraction': test_fraction,
    'split_source': split_source,
    'num_clips': len(kept_clips),
    'num_frames': sum(clip['num_frames'] for clip in kept_clips),
    'num_input_frames': sum(clip['num_input_frames'] for clip in kept_clips),
    'num_identities': len(identities),
    'identities': identities,
    'identities_in_both_splits': len(split_identities['train'] & split_identities['test']),
    'splits': {
      split: {
        'clips': len(index[split]),
        'frames': num_records[split],
        'identities': len(split_identities[split]),
        'shards': shard_names[split],
      }
      for split in records.SPLITS
    },
    'clips': kept_clips,
    'num_skipped': len(skipped),
    'skipped_counts': dict(Counter(item.kind for item in skipped)),
    'skipped': [dataclasses.asdict(item) for item in skipped],
  }
  return Plan(tuple(shards), clip_index, manifest)


def _cut(pieces: list[tuple[str, int, int]], size: int) -> list[list[tuple[str, int, int]]]:
  """Splits a sequence of record ranges into runs of `size` records (the last may be shorter)."""
  cuts, current, filled = [], [], 0
  for key, begin, end in pieces:
    while begin < end:
      take = min(end - begin, size - filled)
      current.append((key, begin, begin + take))
      begin += take
      filled += take
      if filled == size:
        cuts.append(current)
        current, filled = [], 0
  if current:
    cuts.append(current)
  return cuts


def write_shard(output, job: ShardJob) -> int:
  """Writes one output shard from the clips' progress files; returns its size in bytes."""
  output = epath.Path(output)
  progress = output / PROGRESS
  with _written_locally(output / job.name) as local:
    writer = ArrayRecordWriter(str(local), 'group_size:1')
    for key, begin, end in job.pieces:
      with _read_locally(progress / f'{key}.array_record') as clip_file:
        with ArrayRecordDataSource([str(clip_file)]) as source:
          for number in range(begin, end):
            writer.write(source[number])
    writer.close()
    size = local.stat().st_size
  return size


def finish(output, prepared_plan: Plan, shard_bytes: dict[str, int], seconds: float) -> dict:
  """Writes the clip index, the tfds metadata and the manifest; removes the progress folder.

  Returns the manifest. Shards of an earlier, different plan (an input that changed between a
  kill and the rerun) are removed.
  """
  output = epath.Path(output)
  wanted = {job.name for job in prepared_plan.shards}
  for path in output.iterdir():
    if '.array_record-' in path.name and path.name not in wanted:
      path.unlink()
  _write_json(output / records.CLIP_INDEX, prepared_plan.clip_index)
  for name, value in tfds_metadata(prepared_plan.clip_index, shard_bytes).items():
    _write_json(output / name, value)
  manifest = dict(prepared_plan.manifest)
  manifest['num_bytes'] = sum(shard_bytes.values())
  manifest['seconds'] = round(seconds, 3)
  manifest['frames_per_sec'] = round(manifest['num_frames'] / seconds, 2) if seconds > 0 else None
  # The manifest is written last: its presence marks a finished preparation.
  _write_json(output / records.MANIFEST, manifest)
  if (output / PROGRESS).exists():
    (output / PROGRESS).rmtree()
  return manifest


def tfds_metadata(clip_index: dict, shard_bytes: dict[str, int]) -> dict[str, dict]:
  """dataset_info.json and features.json, so that tensorflow-datasets reads the folder in place.

  `tfds.builder_from_directory(output).as_data_source(split)` then gives decoded frames
  (reenact_jax/tfds_frames.py decodes the records; tfds imports it by the name in features.json).
  """
  splits = []
  for split, info in clip_index['splits'].items():
    if info['num_records']:
      splits.append(
        {
          'name': split,
          'filepathTemplate': '{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
          'numBytes': str(sum(shard_bytes[name] for name in info['shards'])),
          'shardLengths': [str(count) for count in info['shard_records']],
        }
      )
  info = {
    'name': TFDS_NAME,
    'description': 'Face-reenactment frames prepared by data.prepare (reenact_jax/records.py).',
    'version': f'{records.FORMAT_VERSION}.0.0',
    'fileFormat': 'array_record',
    'moduleName': 'reenact_jax.tfds_frames',
    'disableShuffling': True,
    'splits': splits,
  }
  features = {'type': 'reenact_jax.tfds_frames.FrameRecord', 'content': {}, 'proto_cls': ''}
  return {'dataset_info.json': info, 'features.json': features}


SPLIT_CHOICES = ('keep', 'by_identity')


@dataclasses.dataclass(frozen=True)
class Started:
  """A preparation whose output is claimed: its clips, what is not a clip, settings, progress."""

  clips: list[ClipInput]
  skipped: list[Skipped]
  options: Options
  settings: dict
  progress: epath.Path


def begin(
  input_path,
  output,
  *,
  resolution: int,
  options: Options | None,
  layout: str,
  split: str,
  test_fraction: float,
  records_per_shard: int,
  overwrite: bool,
) -> Started:
  """What every preparation (one machine or Beam) does first: check the choices, find the
  clips, and claim (or resume) the output folder.

  Raises:
    FileNotFoundError: the input does not exist.
    ValueError: an unknown layout or split.
    OutputNotEmpty: see start_output.
  """
  if split not in SPLIT_CHOICES:
    raise ValueError(f'Unknown split {split!r}: use one of {", ".join(SPLIT_CHOICES)}.')
  options = dataclasses.replace(options or Options(resolution=resolution), resolution=resolution)
  clips, skipped, layout = dataset_layouts.discover(input_path, layout)
  run_settings = settings(
    input_path,
    options,
    layout=layout,
    split=split,
    test_fraction=test_fraction,
    records_per_shard=records_per_shard,
  )
  progress = start_output(output, run_settings, overwrite)
  return Started(clips, skipped, options, run_settings, progress)


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
  layout: str = 'auto',
  split: str = 'keep',
  progress_bar: bool = False,
) -> dict:
  """Prepares `input_path` into `output`; returns the manifest (also written as manifest.json).

  Rerunning an interrupted preparation with the same settings resumes it; the result is the
  same as an uninterrupted run's. `split`: 'keep' uses the dataset's own train/test split where
  the layout has one, 'by_identity' always holds out identities. Raises what `begin` raises.
  """
  start = time.perf_counter()
  started = begin(
    input_path,
    output,
    resolution=resolution,
    options=options,
    layout=layout,
    split=split,
    test_fraction=test_fraction,
    records_per_shard=records_per_shard,
    overwrite=overwrite,
  )
  done = {}  # clip key -> done-record
  for clip in started.clips:
    path = started.progress / f'{clip_key(clip)}.json'
    if path.exists():
      done[clip_key(clip)] = json.loads(path.read_text())
  if done:
    logging.info('Resuming: %d of %d clips were prepared before.', len(done), len(started.clips))
  jobs = [
    (clip, started.options, str(started.progress))
    for clip in started.clips
    if clip_key(clip) not in done
  ]
  bar = tqdm(total=len(jobs), desc='Clips', unit='clip', file=sys.stderr, disable=not progress_bar)

  def collect(outcome: dict) -> None:
    _log_skipped(outcome)
    done[clip_key(ClipInput(**outcome['clip']))] = outcome
    bar.update()

  if workers > 1 and len(jobs) > 1:
    with multiprocessing.get_context('spawn').Pool(min(workers, len(jobs))) as pool:
      for outcome in pool.imap_unordered(_prepare_job, jobs):
        collect(outcome)
  else:
    for job in jobs:
      collect(_prepare_job(job))
  bar.close()
  outcomes = [done[clip_key(clip)] for clip in started.clips]
  prepared_plan = plan(outcomes, started.skipped, started.settings)
  shard_bytes = {job.name: write_shard(output, job) for job in prepared_plan.shards}
  return finish(output, prepared_plan, shard_bytes, time.perf_counter() - start)


def _prepare_job(job: tuple[ClipInput, Options, str]) -> dict:
  return prepare_clip(*job)


def _log_skipped(outcome: dict) -> None:
  if 'skipped' in outcome:
    logging.warning('Skipped %s: %s', outcome['skipped']['path'], outcome['skipped']['reason'])


def summary(manifest: dict) -> str:
  """A few human-readable lines about a preparation."""
  lines = [
    f'Prepared {manifest["num_clips"]} clips, {manifest["num_frames"]} frames '
    f'({manifest["num_input_frames"]} read), {manifest["num_identities"]} identities at '
    f'{manifest["resolution"]}x{manifest["resolution"]} in {manifest["seconds"]:.1f} s '
    f'({manifest["frames_per_sec"]} frames/s); layout {manifest["layout"]}, split from '
    f'{_SPLIT_SOURCES[manifest["split_source"]]}.'
  ]
  for split, counts in manifest['splits'].items():
    lines.append(
      f'  {split}: {counts["clips"]} clips, {counts["frames"]} frames, '
      f'{counts["identities"]} identities, {len(counts["shards"])} shards'
    )
  if manifest['split_source'] == 'input' and manifest['identities_in_both_splits']:
    lines.append(f'  {manifest["identities_in_both_splits"]} identities are in both splits.')
  kinds = ', '.join(f'{n} {kind}' for kind, n in sorted(manifest['skipped_counts'].items()))
  lines.append(f'Skipped {manifest["num_skipped"]} inputs' + (f' ({kinds}):' if kinds else '.'))
  lines += [f'  {item["path"]}: {item["reason"]}' for item in manifest['skipped']]
  return '\n'.join(lines)


_SPLIT_SOURCES = {
  'input': "the dataset's own train/test folders",
  'identity': 'held-out identities',
  'clip_tail': "each clip's last frames (one identity)",
}
