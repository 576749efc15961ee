"""The pretrained face models: TFLite files taken from the `mediapipe==0.10.21` wheel.

The command is `python -m data.mediapipe_models`; this module is its library.

mediapipe itself is never installed (it pins numpy<2); its wheel is a zip archive that ships the
face-detection, face-mesh, iris and selfie-segmentation `.tflite` files, which `ai-edge-litert`
runs. At setup time (`make setup`) this module downloads the wheel from the package registry once
and extracts the models; at run time `reenact_jax.face.model_dir()` only looks for the extracted
files and never touches the network.
"""

import hashlib
import pathlib
import subprocess
import sys
import zipfile

MEDIAPIPE_REQUIREMENT = 'mediapipe==0.10.21'

# File name -> path inside the wheel.
MODEL_FILES = {
  'face_detection_short_range.tflite': (
    'mediapipe/modules/face_detection/face_detection_short_range.tflite'
  ),
  'face_detection_full_range_sparse.tflite': (
    'mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite'
  ),
  'face_landmark.tflite': 'mediapipe/modules/face_landmark/face_landmark.tflite',
  'iris_landmark.tflite': 'mediapipe/modules/iris_landmark/iris_landmark.tflite',
  'selfie_segmentation.tflite': 'mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite',
}

# SHA-256 of each file as shipped in the mediapipe 0.10.21 wheel.
MODEL_SHA256 = {
  'face_detection_short_range.tflite': (
    'bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8'
  ),
  'face_detection_full_range_sparse.tflite': (
    '2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1'
  ),
  'face_landmark.tflite': '1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814',
  'iris_landmark.tflite': 'd1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f',
  'selfie_segmentation.tflite': '9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c',
}


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
