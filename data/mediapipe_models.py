"""The pretrained face models: TFLite files taken from the `mediapipe==0.10.21` wheel.

mediapipe itself is never installed (it pins numpy<2); its wheel is a zip archive that ships the
face-detection and face-mesh `.tflite` files, which `ai-edge-litert` runs. At setup time
(`make setup`) this module downloads the wheel from the package registry once and extracts the
models; at run time `model_dir()` only looks for the extracted files and never touches the
network.

    python -m data.mediapipe_models --output DIR [--wheel PATH]
"""

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

MEDIAPIPE_REQUIREMENT = 'mediapipe==0.10.21'
ENV_VAR = 'REENACT_JAX_MODELS'

# File name -> path inside the wheel.
MODEL_FILES = {
  'face_detection_short_range.tflite': (
    'mediapipe/modules/face_detection/face_detection_short_range.tflite'
  ),
  'face_landmark.tflite': 'mediapipe/modules/face_landmark/face_landmark.tflite',
  'face_landmark_with_attention.tflite': (
    'mediapipe/modules/face_landmark/face_landmark_with_attention.tflite'
  ),
  'iris_landmark.tflite': 'mediapipe/modules/iris_landmark/iris_landmark.tflite',
}

# SHA-256 of each file as shipped in the mediapipe 0.10.21 wheel.
MODEL_SHA256 = {
  'face_detection_short_range.tflite': (
    'bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8'
  ),
  'face_landmark.tflite': '1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814',
  'face_landmark_with_attention.tflite': (
    'e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4'
  ),
  'iris_landmark.tflite': 'd1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f',
}

# The files the preparation code actually runs (the attention model needs custom ops that
# ai-edge-litert does not ship, so the 478-point mesh is face_landmark + iris_landmark).
REQUIRED_FILES = (
  'face_detection_short_range.tflite',
  'face_landmark.tflite',
  'iris_landmark.tflite',
)


def default_model_dir() -> pathlib.Path:
  """Where `make setup` puts the models: `<sys.prefix>/share/reenact_jax/mediapipe`."""
  return pathlib.Path(sys.prefix) / 'share' / 'reenact_jax' / 'mediapipe'


def model_dir() -> pathlib.Path:
  """The folder holding the extracted `.tflite` models.

  Looks at $REENACT_JAX_MODELS, else `<sys.prefix>/share/reenact_jax/mediapipe`.

  Raises:
    FileNotFoundError: naming the folder, the missing files and the command that fixes it.
  """
  from_env = os.environ.get(ENV_VAR)
  folder = pathlib.Path(from_env) if from_env else default_model_dir()
  missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
  if missing:
    origin = f'${ENV_VAR}' if from_env else 'the default location'
    raise FileNotFoundError(
      f'Face models not found in {folder} ({origin}): missing {", ".join(missing)}. '
      f'Run `make setup` (or `python -m data.mediapipe_models --output {folder}`) once with '
      f'access to the package registry, or set ${ENV_VAR} to a folder that holds them.'
    )
  return folder


def model_path(name: str) -> pathlib.Path:
  """Path of one model file, e.g. `model_path('face_landmark.tflite')`."""
  return model_dir() / name


def download_wheel(destination: pathlib.Path) -> pathlib.Path:
  """Downloads the mediapipe wheel (no dependencies) with pip into `destination`."""
  destination.mkdir(parents=True, exist_ok=True)
  command = [
    sys.executable,
    '-m',
    'pip',
    'download',
    MEDIAPIPE_REQUIREMENT,
    '--no-deps',
    '--only-binary=:all:',
    '--dest',
    str(destination),
  ]
  subprocess.run(command, check=True)
  wheels = sorted(destination.glob('mediapipe-*.whl'))
  if not wheels:
    raise FileNotFoundError(f'pip download left no mediapipe wheel in {destination}.')
  return wheels[-1]


def extract_models(wheel: pathlib.Path, output: pathlib.Path) -> list[pathlib.Path]:
  """Extracts MODEL_FILES from the wheel into `output`; returns the written paths."""
  output.mkdir(parents=True, exist_ok=True)
  written = []
  try:
    archive = zipfile.ZipFile(wheel)
  except (zipfile.BadZipFile, FileNotFoundError) as error:
    raise ValueError(f'{wheel} is not a readable wheel ({error}).') from error
  with archive:
    names = set(archive.namelist())
    for file_name, member in MODEL_FILES.items():
      if member not in names:
        raise ValueError(f'{wheel} has no {member}: is it {MEDIAPIPE_REQUIREMENT}?')
      data = archive.read(member)
      digest = hashlib.sha256(data).hexdigest()
      if digest != MODEL_SHA256[file_name]:
        raise ValueError(
          f'{member} in {wheel} has SHA-256 {digest}, expected {MODEL_SHA256[file_name]}: '
          f'the wheel is corrupt or not {MEDIAPIPE_REQUIREMENT}.'
        )
      target = output / file_name
      # Write then rename, so an interrupted setup never leaves a truncated model behind.
      partial = target.with_suffix('.partial')
      partial.write_bytes(data)
      partial.replace(target)
      written.append(target)
  return written


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--output', type=pathlib.Path, default=default_model_dir())
  parser.add_argument(
    '--wheel', type=pathlib.Path, default=None, help='a local mediapipe wheel (skips download)'
  )
  args = parser.parse_args(argv)
  if args.wheel is not None:
    written = extract_models(args.wheel, args.output)
  else:
    with tempfile.TemporaryDirectory() as scratch:
      wheel = download_wheel(pathlib.Path(scratch))
      written = extract_models(wheel, args.output)
  for path in written:
    print(f'{path} ({path.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
