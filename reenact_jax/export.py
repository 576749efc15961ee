r"""Export the EMA generator of a run as a self-contained inference artifact.

  python -m reenact_jax.export --workdir=DIR --output=DIR/export [--step=N] [--verify=false]

The artifact (generator.jax_exported, weights.npz, spec.json) is described in
reenact_jax/exporter.py and runs with reenact_jax/exported.py (jax and numpy only).
"""

import json
import pathlib
import sys

from absl import app, flags

from reenact_jax import checkpointing, cli, exported, exporter, inference

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/.')
_OUTPUT = flags.DEFINE_string('output', None, 'Folder to write the artifact to (created).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: newest).')
_VERIFY = flags.DEFINE_bool(
  'verify', True, 'Read the artifact back and compare it with the in-process generator.'
)
flags.mark_flags_as_required(['workdir', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    spec = exporter.export_generator(
      _WORKDIR.value, _OUTPUT.value, _STEP.value, verify=_VERIFY.value
    )
  except (
    inference.CheckpointNotFoundError,
    checkpointing.IncompatibleCheckpointError,
    exporter.ExportError,
    exported.ArtifactError,
  ) as error:
    print(f'export: {error}', file=sys.stderr)
    sys.exit(1)
  sizes = {
    name: (pathlib.Path(_OUTPUT.value) / name).stat().st_size
    for name in (exported.SPEC_FILE, exported.EXPORTED_FILE, exported.WEIGHTS_FILE)
  }
  print(
    json.dumps(
      {
        'output': _OUTPUT.value,
        'step': spec['step'],
        'platforms': spec['platforms'],
        'num_parameters': spec['num_parameters'],
        'bytes': sizes,
      }
    )
  )


if __name__ == '__main__':
  cli.run(main)
