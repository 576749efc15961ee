"""Run an exported reenact_jax generator with nothing but jax and numpy.

An artifact folder written by `python -m reenact_jax.export` holds

  generator.jax_exported   the generator as `jax.export` serialised StableHLO (CPU, CUDA, TPU;
                           symbolic batch size `b`); its first argument is the weights
  weights.npz              the EMA generator weights, one array per parameter path
  spec.json                inputs, outputs, weights, step, a config summary, the landmark
                           convention and the preprocessing around the generator (crop framing,
                           face-mask polygon, stable landmarks, hole size)

Usage:

  from reenact_jax import exported
  reenact = exported.load('runs/demo/export')
  outputs = reenact(source, source_landmarks, driving_landmarks, source_mask, source_matte)
  frame = np.asarray(outputs['output'])  # (B, H, W, 3) float32 in [0, 1]

This module imports only the standard library, numpy and jax (no flax, no training code, no
config), so it can be copied into an application on its own.
"""

import json
import pathlib
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

SPEC_FILE = 'spec.json'
EXPORTED_FILE = 'generator.jax_exported'
WEIGHTS_FILE = 'weights.npz'
FORMAT = 'reenact_jax.exported'
FORMAT_VERSION = 3  # 2: the source person matte is an input; 3: spec['preprocessing'].
# Versions this loader runs (version 2 lacks only the preprocessing record, which the generator
# does not need; reenact --export requires it).
READABLE_VERSIONS = (2, 3)
# Keys every readable spec has.
_SPEC_KEYS = ('inputs', 'weights', 'image_size', 'num_landmarks', 'step')

# The order of the positional inputs of the callable returned by `load`.
INPUT_NAMES = ('source', 'source_landmarks', 'driving_landmarks', 'source_mask', 'source_matte')

_REEXPORT_HINT = 'Re-export it: python -m reenact_jax.export --workdir=RUN_DIR --output={path}'


class ArtifactError(FileNotFoundError):
  """The artifact folder is missing a file or holds files that do not belong together."""


class InputError(ValueError):
  """An input of the exported generator has the wrong shape, dtype or batch size."""


def _read_spec(path: pathlib.Path) -> dict[str, Any]:
  spec_path = path / SPEC_FILE
  if not path.is_dir():
    raise ArtifactError(f'Export folder {path} does not exist. {_REEXPORT_HINT.format(path=path)}')
  for name in (SPEC_FILE, EXPORTED_FILE, WEIGHTS_FILE):
    if not (path / name).is_file():
      raise ArtifactError(
        f'Export folder {path} has no {name}; an artifact needs {SPEC_FILE}, {EXPORTED_FILE} '
        f'and {WEIGHTS_FILE} together. {_REEXPORT_HINT.format(path=path)}'
      )
  try:
    spec = json.loads(spec_path.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise ArtifactError(
      f'{spec_path} is not readable JSON ({error}). {_REEXPORT_HINT.format(path=path)}'
    ) from error
  if not isinstance(spec, dict):
    raise ArtifactError(
      f'{spec_path} is not an artifact spec (a JSON object). {_REEXPORT_HINT.format(path=path)}'
    )
  if spec.get('format') != FORMAT or spec.get('format_version') not in READABLE_VERSIONS:
    raise ArtifactError(
      f'{spec_path} is not a {FORMAT} spec of version {" or ".join(map(str, READABLE_VERSIONS))}'
      f' (found format={spec.get("format")!r}, version={spec.get("format_version")!r}). '
      + _REEXPORT_HINT.format(path=path)
    )
  missing = [key for key in _SPEC_KEYS if key not in spec]
  if missing:
    raise ArtifactError(
      f'{spec_path} lacks {", ".join(missing)}. {_REEXPORT_HINT.format(path=path)}'
    )
  return spec


def _read_weights(path: pathlib.Path, spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The weights as a flat {parameter path: array} dict, checked against the spec."""
  weights_path = path / WEIGHTS_FILE
  try:
    with np.load(weights_path, allow_pickle=False) as archive:
      weights = {name: archive[name] for name in archive.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # Truncated, empty, foreign.
    raise ArtifactError(
      f'{weights_path} is not a readable .npz ({error}). {_REEXPORT_HINT.format(path=path)}'
    ) from error
  expected = {w['path']: w for w in spec['weights']}
  missing = sorted(set(expected) - set(weights))
  extra = sorted(set(weights) - set(expected))
  wrong = [
    f'{name}: {weights[name].dtype}{list(weights[name].shape)}, spec '
    f'{expected[name]["dtype"]}{expected[name]["shape"]}'
    for name in sorted(set(expected) & set(weights))
    if list(weights[name].shape) != expected[name]['shape']
    or str(weights[name].dtype) != expected[name]['dtype']
  ]
  if missing or extra or wrong:
    raise ArtifactError(
      f'{weights_path} does not match {path / SPEC_FILE}: missing {missing[:5]}, unexpected '
      f'{extra[:5]}, wrong shape/dtype {wrong[:5]}. The files come from different exports. '
      + _REEXPORT_HINT.format(path=path)
    )
  return weights


class ExportedGenerator:
  """The loaded artifact; call it like the generator.

  Attributes:
    spec: the parsed spec.json (inputs, outputs, step, config summary).
    image_size: H = W of the images it takes, pixels.
    num_landmarks: N of the landmarks it takes.
    step: the training step of the exported weights.
  """

  def __init__(self, path: pathlib.Path, spec: dict[str, Any], exported, weights):
    self.path = path
    self.spec = spec
    self.image_size = int(spec['image_size'])
    self.num_landmarks = int(spec['num_landmarks'])
    self.step = int(spec['step'])
    self._exported = exported
    self._weights = jax.device_put(weights)
    # One jit around the deserialised function: compiled once per batch size, then cached.
    self._call = jax.jit(exported.call)

  @property
  def platforms(self) -> tuple[str, ...]:
    return tuple(self._exported.platforms)

  def _check_inputs(self, arrays: dict[str, Any]) -> dict[str, Any]:
    checked = {}
    batch_sizes = {}
    for spec_input in self.spec['inputs']:
      name = spec_input['name']
      array = arrays[name]
      if not hasattr(array, 'shape') or not hasattr(array, 'dtype'):
        array = np.asarray(array)
      expected = tuple(spec_input['shape'])  # ('b', ...)
      shape = tuple(array.shape)
      expected_text = '(' + ', '.join(str(d) for d in expected) + ')'
      if len(shape) != len(expected) or shape[1:] != tuple(expected[1:]):
        raise InputError(
          f'Input {name} has shape {shape}; expected {expected_text} (b = batch size) for this '
          f'export ({spec_input["description"]}).'
        )
      if shape[0] < 1:
        raise InputError(f'Input {name} has batch size 0; expected at least one example.')
      if not np.issubdtype(np.dtype(array.dtype), np.floating):
        raise InputError(
          f'Input {name} has dtype {array.dtype}; expected float32 with values in '
          f'{spec_input["range"]} (convert uint8 images with image.astype(np.float32) / 255).'
        )
      batch_sizes[name] = shape[0]
      checked[name] = array.astype(np.float32) if array.dtype != np.float32 else array
    if len(set(batch_sizes.values())) > 1:
      raise InputError(
        f'Inputs have different batch sizes {batch_sizes}; every input needs the same b.'
      )
    return checked

  def __call__(self, source, source_landmarks, driving_landmarks, source_mask, source_matte):
    """Reenacts `source` with the pose and expression of `driving_landmarks`.

    Args:
      source: (B, H, W, 3) float32 source portrait in [0, 1].
      source_landmarks, driving_landmarks: (B, N, 3) float32 normalised landmarks (see
        spec['landmarks']).
      source_mask: (B, H, W, 1) float32 {0, 1} face mask of the source.
      source_matte: (B, H, W, 1) float32 [0, 1] person matte of the source.

    Returns:
      dict of jax arrays, float32: 'output', 'foreground', 'background' (B, H, W, 3) and
      'alpha' (B, H, W, 1) in [0, 1]; 'projected' (B, H/4, W/4, 3) in [0, 1]; and the flow
      fields listed in spec['outputs'].
    """
    arrays = (source, source_landmarks, driving_landmarks, source_mask, source_matte)
    inputs = self._check_inputs(dict(zip(INPUT_NAMES, arrays, strict=True)))
    return self._call(self._weights, *(inputs[name] for name in INPUT_NAMES))


def load(path: str | pathlib.Path) -> ExportedGenerator:
  """Loads the artifact folder written by `python -m reenact_jax.export`.

  Returns a callable `(source, source_landmarks, driving_landmarks, source_mask,
  source_matte) -> dict of outputs`; see `ExportedGenerator.__call__`. Any batch size works
  (compiled once per size).
  """
  path = pathlib.Path(path)
  spec = _read_spec(path)
  try:
    exported = jax_export.deserialize(bytearray((path / EXPORTED_FILE).read_bytes()))
  except Exception as error:  # A truncated or foreign file fails deep inside the deserialiser.
    raise ArtifactError(
      f'{path / EXPORTED_FILE} could not be deserialised with jax {jax.__version__} '
      f'(exported with jax {spec.get("jax_version")}): {type(error).__name__}: {error}. '
      + _REEXPORT_HINT.format(path=path)
    ) from error
  weights = _read_weights(path, spec)
  return ExportedGenerator(path, spec, exported, weights)
