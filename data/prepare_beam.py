"""Data preparation on Apache Beam: the same output as `python -m data.prepare`, on many machines.

    python -m data.prepare_beam --input=/path/to/videos --output=/path/to/shards \\
        --resolution=256 [--layout=...] [--split=...] [--test_fraction=0.1] [--overwrite] \\
        -- [Beam pipeline options, e.g. --runner=DirectRunner --direct_num_workers=2]

Everything after `--` goes to Beam (the DirectRunner when none is given). The flags before it
are data.prepare's. Rerunning the same command after a kill resumes it. How to run it on
Dataflow, Flink or Spark: data/README.md. Needs the 'beam' extra (`pip install .[beam]`).
"""

import dataclasses
import logging
import sys

import apache_beam as beam
from absl import flags
from apache_beam.options.pipeline_options import PipelineOptions

from reenact_jax import cli, dataset_layouts, preparation, preparation_beam

_INPUT = flags.DEFINE_string('input', None, 'A folder of clips or one video file.')
_OUTPUT = flags.DEFINE_string('output', None, 'Folder for the shards (created; may be gs://).')
_RESOLUTION = flags.DEFINE_integer('resolution', 256, 'Side of the square crops, pixels.')
_LAYOUT = flags.DEFINE_enum(
  'layout', 'auto', dataset_layouts.LAYOUTS, 'How the input names identities and splits.'
)
_SPLIT = flags.DEFINE_enum('split', 'keep', preparation.SPLIT_CHOICES, 'As data.prepare --split.')
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
  logging.getLogger().setLevel(logging.INFO)
  options = dataclasses.replace(
    preparation.Options(resolution=_RESOLUTION.value),
    face_fraction=_FACE_FRACTION.value,
    image_format=_IMAGE_FORMAT.value,
    max_frames=_MAX_FRAMES.value,
  )
  try:
    # The pipeline runs when its block ends.
    with beam.Pipeline(options=PipelineOptions(argv[1:])) as pipeline:
      summary = preparation_beam.build(
        pipeline,
        _INPUT.value,
        _OUTPUT.value,
        resolution=_RESOLUTION.value,
        test_fraction=_TEST_FRACTION.value,
        overwrite=_OVERWRITE.value,
        records_per_shard=_RECORDS_PER_SHARD.value,
        options=options,
        layout=_LAYOUT.value,
        split=_SPLIT.value,
      )
      summary | 'Print' >> beam.Map(print)
  except (FileNotFoundError, preparation.OutputNotEmpty) as error:
    print(f'error: --input/--output: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  cli.run(main)
