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

import logging
import sys

from absl import app, flags

from reenact_jax import cli, preparation, preparation_flags

_PREPARATION = preparation_flags.define()
_WORKERS = flags.DEFINE_integer('workers', 1, 'Processes preparing clips in parallel.')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  arguments = _PREPARATION()
  try:
    manifest = preparation.prepare(**arguments, workers=_WORKERS.value, progress_bar=True)
  except (FileNotFoundError, preparation.OutputNotEmpty) as error:
    print(f'error: --input/--output: {error}', file=sys.stderr)
    sys.exit(2)
  print(preparation.summary(manifest))
  if not manifest['num_clips']:
    print(f'error: no usable clip in {arguments["input_path"]}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
