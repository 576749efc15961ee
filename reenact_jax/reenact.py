r"""Reenact a portrait with the head motion and expressions of a driving video.

  python -m reenact_jax.reenact --workdir=DIR --source=portrait.jpg --driving=clip.mp4 \
      --output=out.mp4 [--step=N] [--relative] [--find_best_frame] [--paste_back] \
      [--side_by_side] [--batch_size=8]

See reenact_jax/reenactment.py for the motion modes and outputs. Dashed spellings
(--find-best-frame, --paste-back, --side-by-side, --batch-size) are accepted too. A bad input
(no face, unreadable video, missing checkpoint, unwritable output, image too large) ends with
one message on stderr and exit status 1.
"""

import logging
import math
import sys

from absl import app, flags
from absl import logging as absl_logging

from reenact_jax import reenactment

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/.')
_SOURCE = flags.DEFINE_string('source', None, 'Source portrait (JPEG/PNG).')
_DRIVING = flags.DEFINE_string('driving', None, 'Driving video.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output video (.mp4, .mov or .mkv).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
_RELATIVE = flags.DEFINE_bool('relative', False, 'Relative motion (see reenactment.py).')
_FIND_BEST_FRAME = flags.DEFINE_bool(
  'find_best_frame',
  False,
  "Relative motion from the driving frame whose expression is closest to the source's.",
)
_PASTE_BACK = flags.DEFINE_bool('paste_back', False, 'Blend the result into the source image.')
_SIDE_BY_SIDE = flags.DEFINE_bool('side_by_side', False, 'Also write <output>_side_by_side.mp4.')
_BATCH_SIZE = flags.DEFINE_integer(
  'batch_size', reenactment.DEFAULT_BATCH_SIZE, 'Frames rendered per jitted call.'
)
for _name in ('find_best_frame', 'paste_back', 'side_by_side', 'batch_size'):
  flags.DEFINE_alias(_name.replace('_', '-'), _name)
flags.mark_flags_as_required(['workdir', 'source', 'driving', 'output'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Orbax logs pages while loading a checkpoint (at INFO, and read-only notices at WARNING):
  # stderr is kept for this command's warnings, errors and the progress bar.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('absl').setLevel(logging.ERROR)
  try:
    summary = reenactment.reenact(
      _WORKDIR.value,
      _SOURCE.value,
      _DRIVING.value,
      _OUTPUT.value,
      relative=_RELATIVE.value,
      find_best_frame=_FIND_BEST_FRAME.value,
      paste_back=_PASTE_BACK.value,
      side_by_side=_SIDE_BY_SIDE.value,
      step=_STEP.value,
      batch_size=_BATCH_SIZE.value,
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
  print(
    f'Wrote {written}: {summary["frames"]} frames at {summary["video_fps"]:.2f} fps from '
    f'checkpoint step {summary["step"]}, in {summary["seconds"]:.1f} s '
    f'({summary["fps"]:.1f} frames/s end to end{rendering}).'
  )


if __name__ == '__main__':
  app.run(main)
