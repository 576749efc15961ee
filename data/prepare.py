"""Videos -> face crops + 478 landmarks + face-oval masks + head poses -> ArrayRecord shards.

    python -m data.prepare --input=/path/to/videos --output=/path/to/shards --resolution=256 \\
        [--layout=auto|fomm|voxceleb|flat|folders] [--split=keep|by_identity] [--workers=N] \\
        [--test_fraction=0.1] [--overwrite]

--input is a dataset folder (FOMM's vox-png/vox-mp4, VoxCeleb1/2 as distributed, a flat folder
of videos such as HDTF, or `<identity>/<clip>` folders: reenact_jax/dataset_layouts.py) or one
video file. A killed run resumes when the same command is run again. Output (see
reenact_jax/records.py for the record format):
  train.array_record-NNNNN-of-MMMMM, test.array_record-...   frame records in clip order
  clip_index.json   per split: record counts per shard, clips (identity, clip, first, num_frames)
  manifest.json     counts, per-split counts, layout, split source, every skipped input and why
  dataset_info.json, features.json   for tfds.builder_from_directory (reenact_jax/tfds_frames.py)
The library is reenact_jax/preparation.py; the same preparation on Apache Beam is
data/prepare_beam.py. Dashed spellings (--test-fraction, ...) are accepted too.
"""

import dataclasses
import logging
import sys

from absl import app, flags

from reenact_jax import cli, dataset_layouts, preparation

_INPUT = flags.DEFINE_string('input', None, 'A folder of clips or one video file.')
_OUTPUT = flags.DEFINE_string('output', None, 'Folder for the shards (created).')
_RESOLUTION = flags.DEFINE_integer('resolution', 256, 'Side of the square crops, pixels.')
_LAYOUT = flags.DEFINE_enum(
  'layout', 'auto', dataset_layouts.LAYOUTS, 'How the input names identities and splits.'
)
_SPLIT = flags.DEFINE_enum(
  'split',
  'keep',
  preparation.SPLIT_CHOICES,
  "keep: the dataset's own train/test split where the layout has one; by_identity: hold out "
  '--test_fraction of the identities.',
)
_WORKERS = flags.DEFINE_integer('workers', 1, 'Processes preparing clips in parallel.')
_TEST_FRACTION = flags.DEFINE_float('test_fraction', 0.1, 'Fraction of identities held out.')
_FACE_FRACTION = flags.DEFINE_float(
  'face_fraction', preparation.Options.face_fraction, 'Face extent over the crop side.'
)
_IMAGE_FORMAT = flags.DEFINE_enum('image_format', 'jpeg', ['jpeg', 'png'], 'Frame encoding.')
_MAX_FRAMES = flags.DEFINE_integer('max_frames', 0, 'Frames per clip (0: all).')
_RECORDS_PER_SHARD = flags.DEFINE_integer(
  'records_per_shard', preparation.DEFAULT_RECORDS_PER_SHARD, 'Records per shard file.'
)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace prepared data in --output.')
flags.mark_flags_as_required(['input', 'output'])
for _name in ('test_fraction', 'face_fraction', 'image_format', 'max_frames', 'records_per_shard'):
  flags.DEFINE_alias(_name.replace('_', '-'), _name)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  options = dataclasses.replace(
    preparation.Options(resolution=_RESOLUTION.value),
    face_fraction=_FACE_FRACTION.value,
    image_format=_IMAGE_FORMAT.value,
    max_frames=_MAX_FRAMES.value,
  )
  try:
    manifest = preparation.prepare(
      _INPUT.value,
      _OUTPUT.value,
      resolution=_RESOLUTION.value,
      workers=_WORKERS.value,
      test_fraction=_TEST_FRACTION.value,
      overwrite=_OVERWRITE.value,
      records_per_shard=_RECORDS_PER_SHARD.value,
      options=options,
      layout=_LAYOUT.value,
      split=_SPLIT.value,
      progress_bar=True,
    )
  except (FileNotFoundError, preparation.OutputNotEmpty) as error:
    print(f'error: --input/--output: {error}', file=sys.stderr)
    sys.exit(2)
  print(preparation.summary(manifest))
  if not manifest['num_clips']:
    print(f'error: no usable clip in {_INPUT.value}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
