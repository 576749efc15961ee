"""Many reenactments with one loaded model: `reenact --jobs=jobs.csv`.

The jobs file is CSV with a header: `source`, `driving` and `output` (paths, relative ones taken
from the file's folder), and optionally any of JOB_OPTIONS as further columns (an empty cell keeps
the command line's value). Rows that share a driving clip (and --driving_face) reuse its tracked
face. A row that fails (a bad input, an unreadable file, a bad option value) is reported with its
reason and never stops the others.
"""

import collections
import csv
import dataclasses
import os
import pathlib
import sys
import traceback

from tqdm import tqdm

from reenact_jax import reenactment

REQUIRED_COLUMNS = ('source', 'driving', 'output')
# Options a row may set, with the type its cell is read as.
JOB_OPTIONS = {
  'motion': str,
  'find_best_frame': bool,
  'smoothing': float,
  'fill_occluded': bool,
  'paste_back': bool,
  'side_by_side': bool,
  'source_frame': int,
  'source_views': int,
  'driving_face': int,
  'report': bool,
  'audio': bool,
}
_TRUE = ('1', 'true', 'yes', 'y', 'on')
_FALSE = ('0', 'false', 'no', 'n', 'off')


class JobsFileError(ValueError):
  """The jobs file itself cannot be used (missing, unreadable, no header, unknown column)."""


@dataclasses.dataclass(frozen=True)
class Job:
  row: int  # Line number in the file (the header is line 1; blank lines count).
  source: pathlib.Path
  driving: pathlib.Path
  output: pathlib.Path
  options: dict[str, str]  # Column -> cell, the non-empty option cells.


@dataclasses.dataclass(frozen=True)
class JobResult:
  job: Job
  summary: dict | None  # reenactment.reenact's summary when done.
  error: str | None  # Why the row failed.

  @property
  def done(self) -> bool:
    return self.error is None


def read_jobs(path: str | os.PathLike) -> list[Job]:
  """The rows of a jobs file. Raises JobsFileError naming the file and the problem."""
  path = pathlib.Path(path)
  try:
    with path.open(newline='', encoding='utf-8') as file:
      reader = csv.DictReader(file)
      columns = [name.strip() for name in (reader.fieldnames or [])]
      rows = [(reader.line_num, row) for row in reader]  # line_num: the row's last line.
  except (OSError, UnicodeDecodeError, csv.Error) as error:
    raise JobsFileError(f'--jobs {path}: cannot be read ({error}).') from error
  missing = [name for name in REQUIRED_COLUMNS if name not in columns]
  if missing:
    raise JobsFileError(
      f'--jobs {path}: the header must name the columns {", ".join(REQUIRED_COLUMNS)} '
      f'(missing: {", ".join(missing)}; found: {", ".join(columns) or "nothing"}).'
    )
  unknown = [name for name in columns if name not in REQUIRED_COLUMNS and name not in JOB_OPTIONS]
  if unknown:
    raise JobsFileError(
      f'--jobs {path}: unknown column(s) {", ".join(unknown)}; options a row may set: '
      f'{", ".join(JOB_OPTIONS)}.'
    )
  folder = path.parent
  jobs = []
  for line, row in rows:
    cells = {
      (key or '').strip(): (value or '').strip()
      for key, value in row.items()
      if not isinstance(value, list)
    }
    if not any(cells.values()):
      continue  # A blank line.
    paths = [folder / cells.get(name, '') if cells.get(name) else None for name in REQUIRED_COLUMNS]
    options = {name: cells[name] for name in JOB_OPTIONS if cells.get(name)}
    jobs.append(Job(line, *paths, options))
  if not jobs:
    raise JobsFileError(f'--jobs {path}: no rows after the header.')
  return jobs


def _parse(name: str, cell: str):
  kind = JOB_OPTIONS[name]
  if kind is bool:
    if cell.lower() in _TRUE:
      return True
    if cell.lower() in _FALSE:
      return False
    raise reenactment.ReenactError(f'{name}={cell!r}: use true or false.')
  try:
    return kind(cell)
  except ValueError:
    raise reenactment.ReenactError(f'{name}={cell!r}: not a valid {kind.__name__}.') from None


def job_options(job: Job, base: reenactment.Options) -> reenactment.Options:
  """The command line's options with the row's cells over them (ReenactError for bad cells)."""
  missing = [name for name in REQUIRED_COLUMNS if getattr(job, name) is None]
  if missing:
    raise reenactment.ReenactError(f'empty {", ".join(missing)}.')
  return dataclasses.replace(
    base, **{name: _parse(name, cell) for name, cell in job.options.items()}
  )


def run_jobs(
  workdir: str | os.PathLike,
  jobs: list[Job],
  base: reenactment.Options,
  *,
  progress: bool = True,
  renderer: reenactment.Renderer | None = None,
) -> list[JobResult]:
  """Runs every job with one loaded model; a failing job is recorded, never raised.

  Raises:
    reenactment.ReenactError when the model itself cannot be loaded (nothing could run).
  """
  renderer = renderer or reenactment.load(workdir, base.step, prior_only=base.prior_only)
  planned = []  # (options, or the reason the row cannot run)
  for job in jobs:
    try:
      planned.append(job_options(job, base))
    except reenactment.ReenactError as error:
      planned.append(str(error))
  # A tracked clip is kept while a later row still uses it (keys as reenactment.reenact's).
  uses = collections.Counter(
    reenactment.track_key(job.driving, options.driving_face)
    for job, options in zip(jobs, planned, strict=True)
    if not isinstance(options, str)
  )
  tracks: dict = {}
  results = []
  bar = tqdm(jobs, desc='Jobs', unit='job', file=sys.stderr, disable=not progress)
  for job, options in zip(bar, planned, strict=True):
    if isinstance(options, str):
      results.append(JobResult(job, None, options))
      continue
    try:
      summary = reenactment.reenact(
        workdir,
        job.source,
        job.driving,
        job.output,
        options,
        progress=False,
        renderer=renderer,
        tracks=tracks,
      )
      results.append(JobResult(job, summary, None))
    except reenactment.ReenactError as error:
      results.append(JobResult(job, None, str(error)))
    except Exception as error:  # noqa: BLE001 - a failing row never stops the others.
      detail = traceback.format_exception_only(type(error), error)[-1].strip()
      results.append(JobResult(job, None, f'unexpected error: {detail}'))
    key = reenactment.track_key(job.driving, options.driving_face)
    uses[key] -= 1
    if uses[key] == 0:
      tracks.pop(key, None)
  return results


def format_summary(results: list[JobResult]) -> str:
  """A table of the jobs: row, status, and the output or the reason it failed."""
  done = sum(result.done for result in results)
  lines = [f'{done} of {len(results)} jobs done, {len(results) - done} failed.']
  lines.append(f'{"row":>5}  {"status":6}  output or reason')
  for result in results:
    if result.done:
      summary = result.summary
      what = f'{summary["output"]} ({summary["frames"]} frames, {summary["seconds"]:.1f} s)'
    else:
      what = result.error
    lines.append(f'{result.job.row:>5}  {"done" if result.done else "failed":6}  {what}')
  return '\n'.join(lines)
