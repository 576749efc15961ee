"""Prepared frames in ArrayRecord shards: the record format and the reader API.

A folder written by `python -m data.prepare` holds, per split ('train', 'test'),
`<split>.array_record-00000-of-0000N` shards of frame records in clip order, plus
`clip_index.json` (per split, each clip's identity, name and record range) and `manifest.json`.

A record is a msgpack map (format version 2):
  'image'         encoded JPEG or PNG bytes of the (H, W, 3) RGB crop
  'matte'         PNG bytes of the (H, W) uint8 person matte of the crop (MediaPipe selfie
                  segmentation: head with hair and ears, neck, shoulders; 255 = person)
  'height', 'width'
  'landmarks'     float16 bytes of (N, 3) landmarks, normalised to the crop: x, y in [-1, 1]
                  (x_norm = 2 * x_px / W - 1, pixel i's centre at x_px = i + 0.5), z on x's scale,
                  mean z 0, z growing away from the camera
  'num_landmarks' N (478: MediaPipe face mesh with irises)
  'mask_polygon'  float16 bytes of (K, 2) face-oval polygon (x, y) in the same units
  'pose_rotation' float32 bytes (3, 3), 'pose_translation' float32 bytes (3,), 'pose_scale' float:
                  landmarks ~ scale * canonical @ rotation.T + translation on the stable points
                  (canonical = face_topology.canonical_landmarks())
  'identity', 'clip' (str), 'frame_index' (int, position in the source clip)
"""

import bisect
import dataclasses
import json
import logging
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import msgpack
import numpy as np

from reenact_jax import crops

FORMAT_VERSION = 2
SPLITS = ('train', 'test')
MANIFEST = 'manifest.json'
CLIP_INDEX = 'clip_index.json'
_SHARD_PATTERN = re.compile(
  r'^(?P<split>[a-z]+)\.array_record-(?P<index>\d{5})-of-(?P<count>\d{5})$'
)


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip of a frame source: its frames are indices first .. first + num_frames - 1."""

  identity: str
  name: str
  first: int  # Index of the clip's first frame in its frame source.
  num_frames: int


class RecordDecodeError(ValueError):
  """A record that cannot be decoded; the message names the shard and record."""


class OldFormatError(ValueError):
  """Shards written by an older version of data preparation: prepare the data again."""


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}.array_record-{index:05d}-of-{count:05d}'


def split_shards(data_dir: str | pathlib.Path, split: str) -> list[pathlib.Path]:
  """The split's shard files in order (empty if the split has none)."""
  data_dir = pathlib.Path(data_dir)
  shards = []
  for path in data_dir.glob(f'{split}.array_record-*'):
    match = _SHARD_PATTERN.match(path.name)
    if match and match['split'] == split:
      shards.append(path)
  return sorted(shards)


def encode_record(
  *,
  image: bytes,
  matte: bytes,
  height: int,
  width: int,
  landmarks: np.ndarray,
  mask_polygon: np.ndarray,
  pose_rotation: np.ndarray,
  pose_translation: np.ndarray,
  pose_scale: float,
  identity: str,
  clip: str,
  frame_index: int,
) -> bytes:
  """One frame record (see the module docstring); `image` and `matte` are encoded bytes."""
  landmarks = np.asarray(landmarks, np.float32)
  return msgpack.packb(
    {
      'version': FORMAT_VERSION,
      'image': bytes(image),
      'matte': bytes(matte),
      'height': int(height),
      'width': int(width),
      'landmarks': landmarks.astype('<f2').tobytes(),
      'num_landmarks': int(landmarks.shape[0]),
      'mask_polygon': np.asarray(mask_polygon, '<f2').tobytes(),
      'pose_rotation': np.asarray(pose_rotation, '<f4').reshape(9).tobytes(),
      'pose_translation': np.asarray(pose_translation, '<f4').reshape(3).tobytes(),
      'pose_scale': float(pose_scale),
      'identity': str(identity),
      'clip': str(clip),
      'frame_index': int(frame_index),
    },
    use_bin_type=True,
  )


def decode_record(raw: bytes, *, shard_name_for_errors: str = '<unknown shard>') -> dict[str, Any]:
  """Decodes one record.

  Args:
    raw: the record bytes.
    shard_name_for_errors: where the record comes from (e.g. 'train.array_record-00001-of-00004
      record 17'), named in the error message.

  Returns:
    dict: 'image' (H, W, 3) uint8 RGB, 'matte' (H, W) uint8, 'landmarks' (N, 3) float32,
    'mask_polygon' (K, 2) float32, 'pose' dict ('rotation' (3, 3), 'translation' (3,),
    'scale' () float32), 'identity', 'clip' (str), 'frame_index' (int).

  Raises:
    OldFormatError: a record of an older format (prepared by an older reenact_jax).
    RecordDecodeError: the record is not a readable frame record; names the shard.
  """
  try:
    fields = msgpack.unpackb(raw, raw=False)
  except Exception as error:  # msgpack raises many types on garbage bytes.
    fields = error
  if isinstance(fields, dict) and isinstance(fields.get('version'), int):
    if fields['version'] < FORMAT_VERSION:
      raise OldFormatError(
        f'Record {shard_name_for_errors} has format version {fields["version"]}; this '
        f'reenact_jax reads version {FORMAT_VERSION} (it adds the person matte). Prepare the data '
        'again: python -m data.prepare --input=VIDEOS --output=NEW_FOLDER'
      )
  try:
    if isinstance(fields, Exception):
      raise fields
    if not isinstance(fields, dict) or fields.get('version') != FORMAT_VERSION:
      raise ValueError(f'not a version-{FORMAT_VERSION} frame record')
    height, width = int(fields['height']), int(fields['width'])
    encoded = np.frombuffer(fields['image'], np.uint8)
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    if image is None or image.shape != (height, width, 3):
      raise ValueError(f'image bytes do not decode to a {height}x{width} RGB image')
    encoded_matte = np.frombuffer(fields['matte'], np.uint8)
    matte = cv2.imdecode(encoded_matte, cv2.IMREAD_GRAYSCALE) if encoded_matte.size else None
    if matte is None or matte.shape != (height, width):
      raise ValueError(f'matte bytes do not decode to a {height}x{width} grey image')
    landmarks = np.frombuffer(fields['landmarks'], '<f2').astype(np.float32)
    landmarks = landmarks.reshape(int(fields['num_landmarks']), 3)
    mask_polygon = np.frombuffer(fields['mask_polygon'], '<f2').astype(np.float32).reshape(-1, 2)
    pose = {
      'rotation': np.frombuffer(fields['pose_rotation'], '<f4').reshape(3, 3).copy(),
      'translation': np.frombuffer(fields['pose_translation'], '<f4').reshape(3).copy(),
      'scale': np.float32(fields['pose_scale']),
    }
    if not (np.isfinite(landmarks).all() and np.isfinite(mask_polygon).all()):
      raise ValueError('non-finite landmarks')
    return {
      'image': cv2.cvtColor(image, cv2.COLOR_BGR2RGB),
      'matte': matte,
      'landmarks': landmarks,
      'mask_polygon': mask_polygon,
      'pose': pose,
      'identity': str(fields['identity']),
      'clip': str(fields['clip']),
      'frame_index': int(fields['frame_index']),
    }
  except Exception as error:  # msgpack, numpy and cv2 raise many types on garbage bytes.
    raise RecordDecodeError(
      f'Cannot decode record {shard_name_for_errors}: {type(error).__name__}: {error}. The shard '
      'is corrupt or was not written by data.prepare: prepare the data again, or set '
      'config.data.skip_corrupt=True to skip bad records.'
    ) from error


def read_json(data_dir: str | pathlib.Path, name: str) -> dict[str, Any]:
  path = pathlib.Path(data_dir) / name
  if not path.is_file():
    raise FileNotFoundError(
      f'{path} is missing: {data_dir} is not a folder prepared by data.prepare (run '
      '`python -m data.prepare --input VIDEOS --output DIR`), or its preparation did not finish.'
    )
  return json.loads(path.read_text())


def open_split(data_dir: str | pathlib.Path, split: str):
  """Random access to one split's raw records, and its clips.

  Returns:
    (source, clips): `source` a grain ArrayRecordDataSource over the split's shards
    (len(source) records, source[i] -> raw bytes, usable directly by grain); `clips` a list of
    dicts with 'identity', 'clip', 'first' (index of the clip's first record in `source`) and
    'num_frames', in record order.
  """
  data_dir = pathlib.Path(data_dir)
  index = read_json(data_dir, CLIP_INDEX)
  version = index.get('format_version', 1)
  if version != FORMAT_VERSION:
    raise OldFormatError(
      f'{data_dir} was prepared with record format {version}; this reenact_jax reads format '
      f'{FORMAT_VERSION} (it adds the person matte). Prepare the data again: python -m '
      'data.prepare --input=VIDEOS --output=NEW_FOLDER'
    )
  if split not in index['splits']:
    raise ValueError(f'{data_dir} has no split {split!r}; it has {sorted(index["splits"])}.')
  clips = [dict(clip) for clip in index['splits'][split]['clips']]
  shards = split_shards(data_dir, split)
  expected = index['splits'][split]['num_records']
  if not shards:
    if expected:
      raise FileNotFoundError(f'{data_dir} lists {expected} {split} records but has no shards.')
    return [], clips
  source = grain.sources.ArrayRecordDataSource([str(path) for path in shards])
  if len(source) != expected:
    raise ValueError(
      f'{data_dir}: the {split} shards hold {len(source)} records but {CLIP_INDEX} lists '
      f'{expected}: the folder is incomplete or mixed; prepare it again with --overwrite.'
    )
  return source, clips


def describe_record(data_dir: str | pathlib.Path, split: str, index: int) -> str:
  """'<shard file> record <i>' for a split-global record index (for error messages)."""
  counts = read_json(data_dir, CLIP_INDEX)['splits'][split]['shard_records']
  for number, count in enumerate(counts):
    if index < count:
      return f'{shard_name(split, number, len(counts))} record {index} (in {data_dir})'
    index -= count
  return f'{split} record {index} beyond the last shard (in {data_dir})'


class RecordFrames:
  """A prepared split as the input pipeline's frame source: clips + decoded, resized frames.

  `frame(i)` returns 'image' (S, S, 3) float32 [0, 1], 'landmarks' (N, 3) float32, 'mask'
  (S, S, 1) float32 {0, 1} and 'matte' (S, S, 1) float32 [0, 1] at S = image_size (landmarks
  are resolution-free). With skip_corrupt, a
  record that fails to decode is counted, logged and replaced by the next good frame of its clip;
  otherwise it raises RecordDecodeError naming the shard and record.
  """

  def __init__(
    self,
    data_dir: str | pathlib.Path,
    split: str,
    *,
    image_size: int,
    skip_corrupt: bool = False,
  ):
    self.data_dir = pathlib.Path(data_dir)
    self.split = split
    self.image_size = int(image_size)
    self.skip_corrupt = skip_corrupt
    self.corrupt_records = 0
    self._source, clip_dicts = open_split(self.data_dir, split)
    if not clip_dicts:
      raise ValueError(f'{self.data_dir} has no {split} clips: prepare more identities.')
    self.clips: Sequence[Clip] = [
      Clip(c['identity'], c['clip'], int(c['first']), int(c['num_frames'])) for c in clip_dicts
    ]
    self._sorted_clips = sorted(self.clips, key=lambda clip: clip.first)
    self._firsts = [clip.first for clip in self._sorted_clips]
    counts = read_json(self.data_dir, CLIP_INDEX)['splits'][split]['shard_records']
    self._shard_ends = np.cumsum(counts).tolist()

  def __len__(self) -> int:
    return len(self._source)

  def _clip_of(self, index: int):
    position = bisect.bisect_right(self._firsts, index) - 1
    return self._sorted_clips[position]

  def _describe(self, index: int) -> str:
    shard = bisect.bisect_right(self._shard_ends, index)
    start = self._shard_ends[shard - 1] if shard else 0
    name = shard_name(self.split, shard, len(self._shard_ends))
    return f'{name} record {index - start} (in {self.data_dir})'

  def _decode(self, index: int) -> dict[str, Any]:
    return decode_record(self._source[index], shard_name_for_errors=self._describe(index))

  def frame(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    try:
      record = self._decode(index)
    except RecordDecodeError as error:
      if not self.skip_corrupt:
        raise
      record = self._replacement(index, error)
    size = self.image_size
    image, matte = record['image'], record['matte']
    if image.shape[:2] != (size, size):
      shrinking = image.shape[0] > size
      interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
      image = cv2.resize(image, (size, size), interpolation=interpolation)
      matte = cv2.resize(matte, (size, size), interpolation=interpolation)
    return {
      'image': image.astype(np.float32) * np.float32(1 / 255),
      'landmarks': record['landmarks'],
      'mask': crops.mask_from_polygon(record['mask_polygon'], size, size),
      'matte': matte[..., None].astype(np.float32) * np.float32(1 / 255),
    }

  def _replacement(self, index: int, error: RecordDecodeError) -> dict[str, Any]:
    self.corrupt_records += 1
    logging.warning('Skipping corrupt record (%d so far): %s', self.corrupt_records, error)
    clip = self._clip_of(index)
    for offset in range(1, clip.num_frames):
      candidate = clip.first + (index - clip.first + offset) % clip.num_frames
      try:
        return self._decode(candidate)
      except RecordDecodeError:
        self.corrupt_records += 1
    raise RecordDecodeError(
      f'Every record of clip {clip.identity}/{clip.name} in {self.data_dir} is corrupt.'
    ) from error
