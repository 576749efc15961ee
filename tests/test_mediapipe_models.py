"""Setup-time extraction of the face models from the mediapipe wheel, and run-time lookup."""

import zipfile

import pytest

from data import mediapipe_wheel
from reenact_jax import face


def test_model_dir_names_the_fix_when_models_are_missing(tmp_path, monkeypatch):
  monkeypatch.setenv(face.ENV_VAR, str(tmp_path))
  with pytest.raises(FileNotFoundError, match='make setup') as error:
    face.model_dir()
  assert str(tmp_path) in str(error.value) and 'face_landmark.tflite' in str(error.value)


def test_model_dir_finds_the_installed_models():
  folder = face.model_dir()
  for name in face.REQUIRED_FILES:
    assert (folder / name).stat().st_size > 100_000


def test_extract_checks_the_wheel_contents(tmp_path):
  wheel = tmp_path / 'mediapipe-0.10.21-fake.whl'
  with zipfile.ZipFile(wheel, 'w') as archive:
    for member in mediapipe_wheel.MODEL_FILES.values():
      archive.writestr(member, b'not the real model')
  with pytest.raises(ValueError, match='SHA-256'):
    mediapipe_wheel.extract_models(wheel, tmp_path / 'out')
  (tmp_path / 'junk.whl').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='not a readable wheel'):
    mediapipe_wheel.extract_models(tmp_path / 'junk.whl', tmp_path / 'out')
  assert not list((tmp_path / 'out').glob('*.tflite'))
