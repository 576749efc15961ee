"""Export of the EMA generator of a run as a self-contained inference artifact.

The command is `python -m reenact_jax.export`. Writes to OUTPUT (see reenact_jax/exported.py,
which loads it with only jax and numpy):

  generator.jax_exported   `jax.export` serialised StableHLO of the generator for CPU, CUDA and
                           TPU, batch size symbolic ('b'); arguments (weights, source,
                           source_landmarks, driving_landmarks, source_mask, source_matte)
  weights.npz              EMA weights as {'/'-joined parameter path: float32 array}
  spec.json                inputs and outputs (names, shapes with 'b', dtypes, value ranges),
                           landmark convention, preprocessing (crop framing, face-mask polygon,
                           stable landmarks, hole size: crops.preprocessing_spec), image size,
                           step, weights list, config summary

After writing, the artifact is read back and run once on a small batch and compared with the
in-process generator (`--verify`, on by default).
"""

import datetime
import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from jax import export as jax_export

from reenact_jax import crops, face_topology, inference, models
from reenact_jax import exported as exported_lib

PLATFORMS = ('cpu', 'cuda', 'tpu')
# Largest difference between the read-back artifact and the in-process generator accepted by
# --verify. Both run the same XLA program on the same backend; a larger gap means a bad export.
VERIFY_TOLERANCE = 1e-3

LANDMARK_CONVENTION = (
  'MediaPipe face mesh topology with irises (478 points, 468..477 are the irises). x, y '
  'normalised to [-1, 1] over the image crop: x_norm = 2 * x_px / W - 1 with x_px the continuous '
  'pixel coordinate (0 = left edge, pixel i centre at i + 0.5), y the same over rows; z on the '
  'same scale as x (MediaPipe z * 2 / W), centred so that the mean z of the landmarks is 0, '
  'growing away from the camera.'
)

# What each generator output is: (value range, description). Outputs absent here are not exported.
OUTPUT_DESCRIPTIONS = {
  'output': ('[0, 1]', 'reenacted frame: alpha * foreground + (1 - alpha) * background'),
  'foreground': ('[0, 1]', 'rendered person foreground RGB'),
  'alpha': ('[0, 1]', 'alpha matte of the foreground (the driving-posed person)'),
  'background': ('[0, 1]', 'source background with the person region inpainted'),
  'warped_source': ('[0, 1]', 'the source pixels moved by the 2D projection of the 3D flow'),
  'flow_2d': ('normalised units', 'backward 2D image flow (dx, dy), the projected 3D flow'),
  'projected': ('[0, 1]', 'low-resolution RGB of the warped 3D feature volume'),
  'flow': (
    'normalised units',
    'backward 3D flow (dx, dy, dz) from driving space into source space, volume coordinates '
    '[-1, 1]^3 (x over W, y over H, z over D)',
  ),
  'flow_prior': ('normalised units', 'geometric (landmark) part of the flow'),
  'confidence': ('[0, 1]', 'confidence of the geometric flow prior'),
  'occlusion': ('[0, 1]', 'occlusion map of the warped volume, 1 = visible in the source'),
}


class ExportError(RuntimeError):
  """The export cannot be written or failed its read-back check."""


def _flatten_params(params: Any) -> dict[str, np.ndarray]:
  """{'a/b/kernel': array} from nested param dicts (keys must not contain '/')."""
  flat = traverse_util.flatten_dict(params)
  if any('/' in key for path in flat for key in path):
    raise ExportError('A parameter name contains "/"; the weights file cannot name it.')
  return {'/'.join(path): np.asarray(leaf) for path, leaf in flat.items()}


def _check_output_writable(output: pathlib.Path) -> None:
  try:
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output, prefix='.write_test'):
      pass
  except OSError as error:
    raise ExportError(
      f'Cannot write the export to {output} ({error.strerror or error}). Choose a writable '
      '--output folder.'
    ) from error


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
  """Write via a temporary file and rename, so that an interrupted export leaves no half file."""
  temporary = path.with_name(f'.{path.name}.tmp')
  temporary.write_bytes(data)
  os.replace(temporary, path)


def _input_specs(image_size: int, num_landmarks: int) -> list[dict[str, Any]]:
  size = image_size
  return [
    {
      'name': 'source',
      'shape': ['b', size, size, 3],
      'dtype': 'float32',
      'range': '[0, 1]',
      'description': 'source portrait RGB, (b, H, W, 3), float32 in [0, 1]',
    },
    {
      'name': 'source_landmarks',
      'shape': ['b', num_landmarks, 3],
      'dtype': 'float32',
      'range': 'about [-1, 1]',
      'description': '3D landmarks of the source, (b, N, 3), see "landmarks"',
    },
    {
      'name': 'driving_landmarks',
      'shape': ['b', num_landmarks, 3],
      'dtype': 'float32',
      'range': 'about [-1, 1]',
      'description': '3D landmarks of the driving frame, (b, N, 3), see "landmarks"',
    },
    {
      'name': 'source_mask',
      'shape': ['b', size, size, 1],
      'dtype': 'float32',
      'range': '{0, 1}',
      'description': 'filled face-oval polygon of the source landmarks, (b, H, W, 1), 1 = face',
    },
    {
      'name': 'source_matte',
      'shape': ['b', size, size, 1],
      'dtype': 'float32',
      'range': '[0, 1]',
      'description': 'person matte of the source (MediaPipe selfie segmentation), (b, H, W, 1)',
    },
  ]


def _example_inputs(image_size: int, num_landmarks: int, batch_size: int) -> list[np.ndarray]:
  """A deterministic plausible batch for the read-back check: a face that turns slightly."""
  rng = np.random.default_rng(0)
  canonical = np.asarray(face_topology.canonical_landmarks(), np.float32)[:num_landmarks]
  if canonical.shape != (num_landmarks, 3):
    canonical = rng.uniform(-0.5, 0.5, (num_landmarks, 3)).astype(np.float32)
  source_landmarks = np.broadcast_to(canonical, (batch_size, num_landmarks, 3))
  angle = np.deg2rad(10.0)
  rotation = np.array(
    [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]], np.float32
  )
  driving_landmarks = source_landmarks @ rotation.T + np.float32(0.03)
  source = rng.uniform(0, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
  centre = (np.arange(image_size) + 0.5) / image_size * 2 - 1
  inside = (np.abs(centre)[:, None] < 0.5) & (np.abs(centre)[None, :] < 0.5)
  mask = np.broadcast_to(inside[None, :, :, None], (batch_size, image_size, image_size, 1))
  matte = np.broadcast_to(
    (np.abs(centre)[:, None] < 0.7)[None, :, :, None], (batch_size, image_size, image_size, 1)
  )
  return [
    source,
    np.ascontiguousarray(source_landmarks),
    driving_landmarks.astype(np.float32),
    mask.astype(np.float32),
    matte.astype(np.float32),
  ]


def _config_summary(config) -> dict[str, Any]:
  model = json.loads(config.model.to_json_best_effort())
  return {
    'image_size': int(config.image_size),
    'model': model,
    'data_source': str(config.data.get('source', '')),
  }


def export_generator(
  workdir: str, output: str, step: int | None = None, *, verify: bool = True
) -> dict[str, Any]:
  """Writes the artifact of the EMA generator of WORKDIR (newest or given step) to OUTPUT.

  Raises:
    inference.CheckpointNotFoundError: no (such) checkpoint in WORKDIR.
    checkpointing.IncompatibleCheckpointError: the checkpoint does not fit this code.
    ExportError: OUTPUT is not writable, or the read-back check failed.

  Returns:
    The spec written to OUTPUT/spec.json.
  """
  output_path = pathlib.Path(output)
  _check_output_writable(output_path)  # Before the (slow) restore and lowering.
  loaded = inference.load_generator(workdir, step)
  config = loaded.config
  image_size, num_landmarks = int(config.image_size), int(config.model.num_landmarks)
  weights = _flatten_params(loaded.params)
  output_names = [name for name in OUTPUT_DESCRIPTIONS]

  def reenact(flat_weights, *inputs):
    params = traverse_util.unflatten_dict(flat_weights, sep='/')
    inputs = dict(zip(models.INPUT_NAMES, inputs, strict=True))
    outputs = models.render(loaded.generator, params, inputs)
    return {name: outputs[name].astype(jnp.float32) for name in output_names}

  (batch,) = jax_export.symbolic_shape('b')
  f32 = jnp.float32
  abstract_inputs = (
    jax.ShapeDtypeStruct((batch, image_size, image_size, 3), f32),
    jax.ShapeDtypeStruct((batch, num_landmarks, 3), f32),
    jax.ShapeDtypeStruct((batch, num_landmarks, 3), f32),
    jax.ShapeDtypeStruct((batch, image_size, image_size, 1), f32),
    jax.ShapeDtypeStruct((batch, image_size, image_size, 1), f32),
  )
  abstract_weights = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
  logging.info('Lowering the generator for %s with a symbolic batch size.', PLATFORMS)
  exported = jax_export.export(jax.jit(reenact), platforms=PLATFORMS)(
    abstract_weights, *abstract_inputs
  )
  outputs_spec = []
  out_tree_avals = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  for name in output_names:
    aval = out_tree_avals[name]
    value_range, description = OUTPUT_DESCRIPTIONS[name]
    outputs_spec.append(
      {
        'name': name,
        'shape': [d if isinstance(d, int) else str(d) for d in aval.shape],
        'dtype': str(aval.dtype),
        'range': value_range,
        'description': description,
      }
    )
  spec = {
    'format': exported_lib.FORMAT,
    'format_version': exported_lib.FORMAT_VERSION,
    'files': {
      'exported': exported_lib.EXPORTED_FILE,
      'weights': exported_lib.WEIGHTS_FILE,
    },
    'call': (
      'exported.call(weights, source, source_landmarks, driving_landmarks, source_mask, '
      'source_matte) -> '
      'dict of outputs; weights = dict(numpy.load(weights.npz)); or use '
      'reenact_jax.exported.load(folder)'
    ),
    'platforms': list(exported.platforms),
    'batch_dimension': 'b (symbolic, any size >= 1)',
    'image_size': image_size,
    'num_landmarks': num_landmarks,
    'landmarks': LANDMARK_CONVENTION,
    'preprocessing': crops.preprocessing_spec(),
    'inputs': _input_specs(image_size, num_landmarks),
    'outputs': outputs_spec,
    'weights': [
      {'path': name, 'shape': list(value.shape), 'dtype': str(value.dtype)}
      for name, value in weights.items()
    ],
    'num_parameters': int(sum(value.size for value in weights.values())),
    'step': loaded.step,
    'workdir': str(pathlib.Path(workdir).absolute()),
    'exported_at': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'jax_version': jax.__version__,
    'config': _config_summary(config),
  }
  _write_atomic(output_path / exported_lib.EXPORTED_FILE, bytes(exported.serialize()))
  weights_temporary = output_path / f'.{exported_lib.WEIGHTS_FILE}.tmp'
  with open(weights_temporary, 'wb') as file:
    np.savez(file, **weights)
  os.replace(weights_temporary, output_path / exported_lib.WEIGHTS_FILE)
  # The spec goes last: a folder with a spec is a complete artifact.
  _write_atomic(output_path / exported_lib.SPEC_FILE, json.dumps(spec, indent=2).encode())
  if verify:
    _verify(output_path, loaded, image_size, num_landmarks)
  logging.info('Exported step %d of %s to %s.', loaded.step, workdir, output_path)
  return spec


def _verify(output_path: pathlib.Path, loaded, image_size: int, num_landmarks: int) -> None:
  """Reads the artifact back and compares it with the in-process generator on one batch."""
  inputs = _example_inputs(image_size, num_landmarks, batch_size=2)
  artifact = exported_lib.load(output_path)
  got = artifact(*inputs)
  want = loaded(dict(zip(models.INPUT_NAMES, inputs, strict=True)))
  for name, value in got.items():
    difference = float(np.max(np.abs(np.asarray(value) - np.asarray(want[name]))))
    if not difference <= VERIFY_TOLERANCE:
      raise ExportError(
        f'The exported generator differs from the in-process one on output {name!r} by '
        f'{difference:.3g} (tolerance {VERIFY_TOLERANCE}); the artifact in {output_path} is not '
        'trustworthy. Please report this with the jax version.'
      )
  logging.info('Read-back check passed: the artifact matches the in-process generator.')
