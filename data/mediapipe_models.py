"""Extract the face models from the `mediapipe==0.10.21` wheel (run once by `make setup`).

    python -m data.mediapipe_models [--output DIR] [--wheel PATH]

Downloads the wheel from the package registry (or reads --wheel), checks every model's SHA-256
and writes the `.tflite` files to DIR (default: where `reenact_jax.face` looks for them).
"""

import pathlib
import sys
import tempfile

from absl import app, flags

from data import mediapipe_wheel
from reenact_jax import cli, face

_OUTPUT = flags.DEFINE_string('output', str(face.default_model_dir()), 'Folder for the models.')
_WHEEL = flags.DEFINE_string('wheel', None, 'A local mediapipe wheel (skips the download).')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  output = pathlib.Path(_OUTPUT.value)
  try:
    if _WHEEL.value:
      written = mediapipe_wheel.extract_models(pathlib.Path(_WHEEL.value), output)
    else:
      with tempfile.TemporaryDirectory() as scratch:
        wheel = mediapipe_wheel.download_wheel(pathlib.Path(scratch))
        written = mediapipe_wheel.extract_models(wheel, output)
  except (ValueError, FileNotFoundError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  for path in written:
    print(f'{path} ({path.stat().st_size} bytes)')


if __name__ == '__main__':
  cli.run(main)
