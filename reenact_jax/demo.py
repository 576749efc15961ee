r"""`make demo`: train the demo model on the bundled data on CPU, reenact, evaluate.

  python -m reenact_jax.demo --output=demo_out [--config=configs/demo.py] [--config.KEY=VALUE]

See reenact_jax/demo_pipeline.py for what it writes. Rerunning resumes the training.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from reenact_jax import cli, demo_pipeline, trainer

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'The demo config.')
_OUTPUT = flags.DEFINE_string('output', 'demo_out', 'Folder for the run and the results.')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Progress lines and results on the terminal; INFO goes to OUTPUT/run/train.0.log.
  logging.get_absl_handler().setLevel(std_logging.WARNING)
  try:
    demo_pipeline.run(_CONFIG.value, _OUTPUT.value)
  except trainer.Preempted as stop:
    print(f'demo stopped: {stop} Run `make demo` again to resume.', file=sys.stderr)
  except (FileNotFoundError, ValueError, RuntimeError) as error:
    print(f'demo failed: {error}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
