"""Data preparation as an Apache Beam pipeline: the same stages as preparation.prepare, spread.

The command is `python -m data.prepare_beam`. The pipeline runs preparation.py's three stages
(see the comment there): `prepare_clip` per clip on any worker, `plan` once every clip is done,
`write_shard` per output shard on any worker, then `finish`. The launcher discovers the clips and
claims the output folder (start_output) before the pipeline starts, so a rerun of the same
command resumes: clips with a done-record in progress/ are not prepared again. The output equals
`python -m data.prepare`'s on the same inputs, record for record. Needs the 'beam' extra.
"""

import functools
import pathlib
import time

import apache_beam as beam

from reenact_jax import preparation


def _prepare(numbered, options, progress):
  number, clip = numbered
  return number, preparation.prepare_clip(clip, options, progress)


def _plan(numbered_outcomes, skipped, run_settings):
  outcomes = [outcome for _, outcome in sorted(numbered_outcomes, key=lambda item: item[0])]
  return preparation.plan(outcomes, skipped, run_settings)


def _write(job, output):
  return job.name, preparation.write_shard(output, job)


def _finish(prepared_plan, shard_bytes, output, started):
  manifest = preparation.finish(output, prepared_plan, shard_bytes, time.time() - started)
  return preparation.summary(manifest)


def build(
  pipeline: beam.Pipeline,
  input_path: str | pathlib.Path,
  output: str | pathlib.Path,
  *,
  resolution: int,
  test_fraction: float = 0.1,
  overwrite: bool = False,
  records_per_shard: int = preparation.DEFAULT_RECORDS_PER_SHARD,
  options: preparation.Options | None = None,
  layout: str = 'auto',
  split: str = 'keep',
) -> beam.PCollection:
  """Adds the preparation to `pipeline`; returns the PCollection of its one summary text.

  Discovery and the output check (preparation.begin) run here, on the launcher, and raise
  what it raises.
  """
  started_at = time.time()
  started = preparation.begin(
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
  progress = str(started.progress)
  output = str(output)
  outcomes = (
    pipeline
    | 'Clips' >> beam.Create(list(enumerate(started.clips)))
    # One clip per work item, wherever a worker is free (Create would keep them together).
    | 'SpreadClips' >> beam.Reshuffle()
    | 'PrepareClip' >> beam.Map(_prepare, options=started.options, progress=progress)
    | 'AllClips' >> beam.combiners.ToList()
  )
  plans = outcomes | 'Plan' >> beam.Map(
    _plan, skipped=started.skipped, run_settings=started.settings
  )
  shard_bytes = (
    plans
    | 'Shards' >> beam.FlatMap(lambda prepared_plan: prepared_plan.shards)
    | 'SpreadShards' >> beam.Reshuffle()
    | 'WriteShard' >> beam.Map(_write, output=output)
    | 'AllShards' >> beam.combiners.ToDict()
  )
  return plans | 'Finish' >> beam.Map(
    functools.partial(_finish, output=output, started=started_at),
    shard_bytes=beam.pvalue.AsSingleton(shard_bytes),
  )
