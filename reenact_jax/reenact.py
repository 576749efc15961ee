r"""Reenact a portrait with the head motion and expressions of a driving video.

  python -m reenact_jax.reenact --workdir=DIR --source=portrait.jpg --driving=clip.mp4 \
      --output=out.mp4 [--motion=auto|relative|absolute] [--find_best_frame] [--smoothing=1] \
      [--paste_back] [--side_by_side] [--report] [--prior_only] [--source_frame=N] \
      [--driving_face=N] [--identity_weights=FILE] [--report_against=CLIP] [--nofill_occluded] \
      [--noaudio] [--step=N] [--batch_size=8]

See reenact_jax/reenactment.py for the motion modes, shots and outputs. --source may be a video
(its --source_frame, by default its most frontal frame). Repeat --source with more portraits
of the same person (--source=front.jpg --source=left.jpg): the first is reenacted and the
others fill in the parts of the face it does not show well (models/fusion.py). --report
writes <output>_report.json: how well the output follows the driving clip (or
--report_against's). Face parts an occluder covers in a driving frame get their landmarks from
the frames around it (reenact_jax/occlusion.py;
--nofill_occluded keeps them as found). --prior_only renders with the geometric prior
alone (the baseline). Dashed spellings (--find-best-frame, --paste-back, ...) are accepted, and
--relative means --motion=relative. A bad input (no face, unreadable video, missing checkpoint,
unwritable output, image too large) ends with one message on stderr and exit status 1.

  python -m reenact_jax.reenact --export=DIR --source=... --driving=... --output=... [options]

renders with an exported artifact (python -m reenact_jax.export) instead of a checkpoint: jax,
numpy and the face models, never flax or the training code (not with --prior_only or --step).

  python -m reenact_jax.reenact --workdir=DIR --jobs=jobs.csv [options]

runs every row of a CSV file (columns source, driving, output, and optionally any of
reenact_jax.jobs.JOB_OPTIONS, which override the command line's options for that row) with one
loaded model, reusing a driving clip's tracked face across rows, and prints a summary table; a
failing row is listed with its reason and does not stop the others (exit status 1 if any failed).
"""

import math
import sys

from absl import app, flags

from reenact_jax import cli, jobs, reenactment

_WORKDIR, _EXPORT = cli.define_model_flags()
_JOBS = flags.DEFINE_string('jobs', None, 'CSV file of jobs (source, driving, output, options).')
_SOURCE = flags.DEFINE_multi_string(
  'source',
  None,
  'Source portrait (JPEG/PNG) or video. Repeat it with more portraits of the same person: the '
  'first is reenacted, the others are more views of the face (each shows what it sees best).',
)
_DRIVING = flags.DEFINE_string('driving', None, 'Driving video.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output video (.mp4, .mov or .mkv).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
_MOTION = flags.DEFINE_enum('motion', 'auto', list(reenactment.MOTIONS), 'Motion transfer.')
_RELATIVE = flags.DEFINE_bool('relative', False, 'The same as --motion=relative.')
_FIND_BEST_FRAME = flags.DEFINE_bool(
  'find_best_frame',
  False,
  "Relative motion from the driving frame whose expression is closest to the source's.",
)
_SMOOTHING = flags.DEFINE_float(
  'smoothing', 1.0, 'Temporal smoothing of the driving landmarks (One Euro); 0 turns it off.'
)
_FILL_OCCLUDED = flags.DEFINE_bool(
  'fill_occluded',
  True,
  'Fill in the landmarks of driving face parts an occluder (a hand, an object) covers.',
)
_SOURCE_FRAME = flags.DEFINE_integer(
  'source_frame', None, 'With a video --source: the frame to use (default: the most frontal).'
)
_SOURCE_VIEWS = flags.DEFINE_integer(
  'source_views',
  1,
  'With a video --source: use this many of its frames as views of the person (the source frame '
  'and the frames of the most different head poses).',
)
_DRIVING_FACE = flags.DEFINE_integer(
  'driving_face', 0, 'The face to follow in the driving clip: 0 the largest, 1 the next, ...'
)
_PASTE_BACK = flags.DEFINE_bool('paste_back', False, 'Blend the result into the source image.')
_SIDE_BY_SIDE = flags.DEFINE_bool('side_by_side', False, 'Also write <output>_side_by_side.mp4.')
_REPORT = flags.DEFINE_bool('report', False, 'Measure the output: <output>_report.json.')
_REPORT_AGAINST = flags.DEFINE_string(
  'report_against',
  '',
  '--report: score the output against this clip (e.g. --driving before occluders were pasted '
  'on it; the same number of frames) instead of --driving.',
)
_IDENTITY = flags.DEFINE_string(
  'identity_weights', '', "--report: dlib's face descriptor file, for the identity distance."
)
_PRIOR_ONLY = flags.DEFINE_bool(
  'prior_only', False, 'Render with the geometric prior alone (no learned weights).'
)
_AUDIO = flags.DEFINE_bool('audio', True, "Copy the driving clip's audio into the output.")
_BATCH_SIZE = flags.DEFINE_integer(
  'batch_size', reenactment.DEFAULT_BATCH_SIZE, 'Frames rendered per jitted call.'
)
for _name in (
  'find_best_frame',
  'paste_back',
  'side_by_side',
  'batch_size',
  'source_frame',
  'source_views',
  'driving_face',
  'prior_only',
  'identity_weights',
  'fill_occluded',
  'report_against',
):
  flags.DEFINE_alias(_name.replace('_', '-'), _name)
flags.register_multi_flags_validator(
  ['jobs', 'source', 'driving', 'output'],
  lambda values: (
    bool(values['jobs']) or all(values[name] for name in ('source', 'driving', 'output'))
  ),
  message='give --source, --driving and --output, or --jobs=FILE.csv',
)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  options = reenactment.Options(
    motion='relative' if _RELATIVE.value else _MOTION.value,
    find_best_frame=_FIND_BEST_FRAME.value,
    smoothing=_SMOOTHING.value,
    fill_occluded=_FILL_OCCLUDED.value,
    paste_back=_PASTE_BACK.value,
    side_by_side=_SIDE_BY_SIDE.value,
    source_frame=_SOURCE_FRAME.value,
    source_views=_SOURCE_VIEWS.value,
    driving_face=_DRIVING_FACE.value,
    prior_only=_PRIOR_ONLY.value,
    report=_REPORT.value,
    report_against=_REPORT_AGAINST.value,
    identity_weights=_IDENTITY.value,
    audio=_AUDIO.value,
    batch_size=_BATCH_SIZE.value,
    step=_STEP.value,
  )
  try:
    renderer = reenactment.open_renderer(_WORKDIR.value, _EXPORT.value, options)
  except reenactment.ReenactError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  if _JOBS.value:
    if options.report_against:
      print(
        'error: --report_against names one clip; it cannot score every row of --jobs.',
        file=sys.stderr,
      )
      sys.exit(1)
    _run_jobs(options, renderer)
    return
  try:
    summary = reenactment.reenact(
      _WORKDIR.value, _SOURCE.value or [], _DRIVING.value, _OUTPUT.value, options, renderer=renderer
    )
  except reenactment.ReenactError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  written = summary['output'] + (
    f' and {summary["side_by_side"]}' if summary['side_by_side'] else ''
  )
  rendering = (
    f', {summary["render_fps"]:.1f} frames/s rendering after compilation'
    if math.isfinite(summary['render_fps'])
    else ''
  )
  model = reenactment.model_name(summary['step'])
  print(
    f'Wrote {written}: {summary["frames"]} frames at {summary["video_fps"]:.2f} fps from '
    f'{model}, {summary["motion"]} motion, in {summary["seconds"]:.1f} s '
    f'({summary["fps"]:.1f} frames/s end to end{rendering}).'
  )
  for note in reenactment.summary_notes(summary):
    print(f'Note: {note}')
  if summary['report'] is not None:
    report = summary['report']
    correlations = ', '.join(
      f'{name} {value:.2f}' if value is not None else f'{name} -'
      for name, value in report['correlation'].items()
    )
    print(
      f'Report ({summary["report_path"]}): face found in {report["face_found_fraction"]:.0%} of '
      f'the output frames; correlation with the driving clip: {correlations}.'
    )


def _run_jobs(options: reenactment.Options, renderer: reenactment.Renderer) -> None:
  try:
    rows = jobs.read_jobs(_JOBS.value)
    results = jobs.run_jobs(_WORKDIR.value, rows, options, renderer=renderer)
  except (jobs.JobsFileError, reenactment.ReenactError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  print(jobs.format_summary(results))
  if not all(result.done for result in results):
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
