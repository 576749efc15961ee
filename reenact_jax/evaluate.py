r"""Evaluate a trained generator with the community's reenactment protocol.

  python -m reenact_jax.evaluate --workdir=DIR [--split=test] [--cross-identity] [--step=N]
      [--max_clips=N] [--lpips_weights=FILE] [--identity_weights=FILE]
      [--prior-only] [--expressions]

Writes WORKDIR/eval/<step>.json (<step>_cross.json; _prior with --prior-only), TensorBoard
scalars, and prints the same result as one JSON line on stdout. The landmark measures include the
motion report: the fraction of output frames where a face is found, and the correlations of mouth
and eye opening, yaw, pitch and roll between output and driving frames. --expressions scores
winks, one-sided smiles and a wide-open mouth made by editing real frames' landmarks, region by
region (WORKDIR/eval/<step>_expressions.json; reenact_jax/expressions.py). The protocol and the
metrics are described in reenact_jax/evaluation.py.
"""

import json
import sys

from absl import app, flags

from reenact_jax import checkpointing, cli, evaluation, inference, lpips, records

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/.')
_SPLIT = flags.DEFINE_string('split', None, 'Data split (default: config.eval.split).')
_CROSS = flags.DEFINE_bool('cross_identity', False, 'Cross-identity protocol.')
flags.DEFINE_alias('cross-identity', 'cross_identity')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
_MAX_CLIPS = flags.DEFINE_integer('max_clips', None, 'Evaluate the first N clips (0: all).')
_LPIPS = flags.DEFINE_string('lpips_weights', None, 'Overrides config.eval.lpips_weights_path.')
_IDENTITY = flags.DEFINE_string(
  'identity_weights', None, 'Overrides config.eval.identity_weights_path.'
)
_PRIOR_ONLY = flags.DEFINE_bool(
  'prior_only', False, 'Evaluate the geometric prior alone (no learned weights): the baseline.'
)
flags.DEFINE_alias('prior-only', 'prior_only')
_EXPRESSIONS = flags.DEFINE_bool(
  'expressions',
  False,
  'Winks, one-sided smiles and a wide-open mouth made by editing the landmarks of real frames: '
  'the expression error of the output per region (eyes, mouth corners, jaw).',
)
_NUM_SOURCES = flags.DEFINE_integer(
  'num_sources',
  1,
  'Source views per clip: its first frame and the frames of the most different head poses, '
  'fused (same identity; the eval JSON also has L1/PSNR/SSIM of the first frame alone).',
)
flags.DEFINE_alias('num-sources', 'num_sources')
flags.mark_flags_as_required(['workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = evaluation.evaluate_workdir(
      _WORKDIR.value,
      split=_SPLIT.value,
      cross_identity=_CROSS.value,
      step=_STEP.value,
      max_clips=_MAX_CLIPS.value,
      lpips_weights=_LPIPS.value,
      identity_weights=_IDENTITY.value,
      prior_only=_PRIOR_ONLY.value,
      expressions=_EXPRESSIONS.value,
      num_sources=_NUM_SOURCES.value,
    )
  except (
    inference.CheckpointNotFoundError,
    checkpointing.IncompatibleCheckpointError,
    evaluation.EvaluationError,
    lpips.LpipsError,
    records.RecordDecodeError,
  ) as error:
    print(f'evaluate: {error}', file=sys.stderr)
    sys.exit(1)
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  cli.run(main)
