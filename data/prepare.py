"""Videos -> face crops + 478 landmarks + face-oval masks + head poses -> ArrayRecord shards.

    python -m data.prepare --input /path/to/videos --output /path/to/shards --resolution 256 \\
        [--workers N] [--test-fraction 0.1] [--overwrite]

--input is a folder in the VoxCeleb layout (`<identity>/<clip>.mp4`, `<identity>/<clip>/` frame
folders, or deeper) or one video file. Output (see reenact_jax/records.py for the record format):
  train.array_record-NNNNN-of-MMMMM, test.array_record-...   frame records in clip order
  clip_index.json   per split: record counts per shard, clips (identity, clip, first, num_frames)
  manifest.json     counts, per-split counts, options, every skipped input and why
Splits are identity-disjoint (a stable hash order picks ~test_fraction of the identities, at
least one when there are two or more). With a single identity the test split is instead the last
test_fraction of each clip's frames.

Bad inputs (unreadable or truncated video, no face, fewer than two frames, unsupported file) are
skipped, listed in the manifest with the reason and counted in the summary; the run goes on.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import pathlib
import sys
import time
from collections import Counter

from array_record.python.array_record_data_source import ArrayRecordDataSource

from data import clips as clips_lib
from reenact_jax import records

DEFAULT_RECORDS_PER_SHARD = 2000
_PARTIAL_SUFFIX = '.partial'
_STAGING = 'staging'

_LANDMARKER = None  # One per process (the TFLite interpreters are not picklable).


class OutputNotEmpty(Exception):
  pass


def _landmarker():
  global _LANDMARKER
  if _LANDMARKER is None:
    from data import face_models

    _LANDMARKER = face_models.FaceLandmarker()
  return _LANDMARKER


def _process(job: tuple[clips_lib.ClipInput, clips_lib.Options]):
  clip, options = job
  try:
    return clips_lib.process_clip(clip, options, _landmarker())
  except Exception as error:  # A bug or an odd input must not end a long run silently.
    logging.exception('Preparing %s failed', clip.path)
    return clips_lib.Skipped(clip.path, 'error', f'{type(error).__name__}: {error}')


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
    from array_record.python.array_record_module import ArrayRecordWriter

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
  options: clips_lib.Options | None = None,
) -> dict:
  """Prepares `input_path` into `output`; returns the manifest (also written as manifest.json).

  Raises:
    FileNotFoundError: the input does not exist.
    OutputNotEmpty: `output` holds shards or a manifest and overwrite is False.
  """
  start = time.perf_counter()
  output = pathlib.Path(output)
  options = options or clips_lib.Options(resolution=resolution)
  options = dataclasses.replace(options, resolution=resolution)
  inputs, skipped = clips_lib.discover(input_path)
  _prepare_output(output, overwrite)

  # Records go to staging shards first: which identities are held out is decided only once
  # every clip is done, so that a skipped clip never leaves a split empty.
  staging = ShardWriter(output, _STAGING, records_per_shard)
  staged = []  # (ClipResult without records, first staging index)

  def add(result: clips_lib.ClipResult) -> None:
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
    'num_landmarks': _num_landmarks(),
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
  if isinstance(result, clips_lib.Skipped):
    logging.warning('Skipped %s: %s', result.path, result.reason)
    skipped.append(result)
  else:
    add(result)


def _num_landmarks() -> int:
  from data import face_models

  return face_models.NUM_LANDMARKS


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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--input', required=True, type=pathlib.Path)
  parser.add_argument('--output', required=True, type=pathlib.Path)
  parser.add_argument('--resolution', type=int, default=256)
  parser.add_argument('--workers', type=int, default=1)
  parser.add_argument('--test-fraction', type=float, default=0.1)
  parser.add_argument('--face-fraction', type=float, default=0.6)
  parser.add_argument('--image-format', choices=('jpeg', 'png'), default='jpeg')
  parser.add_argument('--max-frames', type=int, default=0, help='per clip; 0 = all')
  parser.add_argument('--records-per-shard', type=int, default=DEFAULT_RECORDS_PER_SHARD)
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  options = clips_lib.Options(
    resolution=args.resolution,
    face_fraction=args.face_fraction,
    image_format=args.image_format,
    max_frames=args.max_frames,
  )
  try:
    manifest = prepare(
      args.input,
      args.output,
      resolution=args.resolution,
      workers=args.workers,
      test_fraction=args.test_fraction,
      overwrite=args.overwrite,
      records_per_shard=args.records_per_shard,
      options=options,
    )
  except (FileNotFoundError, OutputNotEmpty) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(summary(manifest))
  if not manifest['num_clips']:
    print(f'error: no usable clip in {args.input}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
