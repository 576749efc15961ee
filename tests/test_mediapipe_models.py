"""Setup-time extraction of the face models from the mediapipe wheel, and run-time lookup."""

import zipfile

import pytest

from data import mediapipe_models


def test_model_dir_names_the_fix_when_models_are_missing(tmp_path, monkeypatch):
  monkeypatch.setenv(mediapipe_models.ENV_VAR, str(tmp_path))
  with pytest.raises(FileNotFoundError, match='make setup') as error:
    mediapipe_models.model_dir()
  assert str(tmp_path) in str(error.value) and 'face_landmark.tflite' in str(error.value)


def test_model_dir_finds_the_installed_models():
  folder = mediapipe_models.model_dir()
  for name in mediapipe_models.REQUIRED_FILES:
    assert (folder / name).stat().st_size > 100_000


def test_extract_checks_the_wheel_contents(tmp_path):
  wheel = tmp_path / 'mediapipe-0.10.21-fake.whl'
  with zipfile.ZipFile(wheel, 'w') as archive:
    for member in mediapipe_models.MODEL_FILES.values():
      archive.writestr(member, b'not the real model')
  with pytest.raises(ValueError, match='SHA-256'):
    mediapipe_models.extract_models(wheel, tmp_path / 'out')
  (tmp_path / 'junk.whl').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='not a readable wheel'):
    mediapipe_models.extract_models(tmp_path / 'junk.whl', tmp_path / 'out')
  assert not list((tmp_path / 'out').glob('*.tflite'))
