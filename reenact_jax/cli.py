"""What every command shares: a bad flag or config is one line on the terminal, exit code 2.

  if __name__ == '__main__':
    cli.run(main)

absl would print a traceback for a mistyped config key (`--config.trian.lr=1`) or a config file
that fails to load, and a usage banner for an unknown or missing flag; a user needs one line
that names the problem.
"""

import logging
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

# The exit code of a command line that cannot run as written (as argparse and absl use).
USAGE_ERROR = 2


def error_line(error: BaseException, max_chars: int | None = None) -> str:
  """The error's message on one line (at most max_chars); a missing config key says which and
  the nearest one; tensorstore's pages of details are left out."""
  if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
    message = f'no config key {error.args[0]}'  # ml_collections adds "Did you mean ...?".
  else:
    message = str(error).split(' See full TensorStore details')[0] or type(error).__name__
  message = ' '.join(message.split())
  if max_chars is not None and len(message) > max_chars:
    message = message[:max_chars] + '...'
  return message


def parse_flags(argv: list[str]) -> list[str]:
  """flags.FLAGS(argv), with every parsing error as `error: ...` on stderr and exit code 2.

  Parsing loads the config file (running its get_config()) and applies `--config.KEY=VALUE`
  overrides, so any exception here is a problem of the command line or the config it names.
  """
  try:
    remaining = flags.FLAGS(argv)
    for name in flags.FLAGS:
      value = flags.FLAGS[name].value
      if isinstance(value, config_flags.config_flags._ErrorConfig):  # noqa: SLF001
        value.image_size  # noqa: B018 (a config file that failed to load raises its error here)
  except Exception as error:  # flags.Error, KeyError/AttributeError of a key, the config's own.
    print(f'error: {error_line(error)}', file=sys.stderr)
    sys.exit(USAGE_ERROR)
  return remaining


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with parse_flags."""
  app.run(main, flags_parser=parse_flags)


def define_model_flags() -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """--workdir (a run's checkpoint) and --export (an exported artifact), exactly one of them."""
  workdir = flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/.')
  export = flags.DEFINE_string(
    'export', None, 'Exported artifact folder (python -m reenact_jax.export) instead of --workdir.'
  )
  flags.register_multi_flags_validator(
    ['workdir', 'export'],
    lambda values: bool(values['workdir']) != bool(values['export']),
    message='give --workdir=RUN_DIR (a checkpoint) or --export=DIR (an exported artifact), '
    'not both',
  )
  return workdir, export


def quiet_library_logs() -> None:
  """Orbax logs pages while loading a checkpoint (at INFO, and read-only notices at WARNING) and
  the HTTP client a line per request: a command's stderr is kept for its own warnings, errors
  and progress bar."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('absl').setLevel(logging.ERROR)
  logging.getLogger('httpx').setLevel(logging.WARNING)
