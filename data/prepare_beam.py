"""Data preparation on Apache Beam: the same output as `python -m data.prepare`, on many machines.

    python -m data.prepare_beam --input=/path/to/videos --output=/path/to/shards \\
        --resolution=256 [--layout=...] [--split=...] [--test_fraction=0.1] [--overwrite] \\
        -- [Beam pipeline options, e.g. --runner=FnApiRunner --direct_num_workers=2]

Everything after `--` goes to Beam. Without a --runner it runs on this machine with Beam's
Python FnApiRunner: Beam's DirectRunner (its own default) first tries to download its Prism
runner binary from GitHub, and nothing here downloads at run time. The flags before it are
data.prepare's. Rerunning the same command after a kill resumes it. How to run it on
Dataflow, Flink or Spark: data/README.md. Needs the 'beam' extra (`pip install .[beam]`).
"""

import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from reenact_jax import cli, preparation, preparation_beam, preparation_flags

_PREPARATION = preparation_flags.define()
LOCAL_RUNNER = 'FnApiRunner'


def main(argv) -> None:
  logging.getLogger().setLevel(logging.INFO)
  options = PipelineOptions(argv[1:])
  if options.view_as(StandardOptions).runner is None:
    options.view_as(StandardOptions).runner = LOCAL_RUNNER
  try:
    # The pipeline runs when its block ends.
    with beam.Pipeline(options=options) as pipeline:
      summary = preparation_beam.build(pipeline, **_PREPARATION())
      summary | 'Print' >> beam.Map(print)
  except (FileNotFoundError, preparation.OutputNotEmpty) as error:
    print(f'error: --input/--output: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  cli.run(main)
