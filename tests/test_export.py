"""Tests of reenact_jax.export (artifact writer) and reenact_jax.exported (jax+numpy loader)."""

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from reenact_jax import crops, exported, exporter, face_topology, inference, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH_SIZES = (2, 3)


@pytest.fixture(scope='module')
def artifact(tiny_workdir, tmp_path_factory):
  """(artifact folder, LoadedGenerator) of the tiny run's newest checkpoint."""
  output = tmp_path_factory.mktemp('export') / 'artifact'
  # The test compares with the in-process generator itself, so skip export's own check.
  exporter.export_generator(str(tiny_workdir), str(output), verify=False)
  return output, inference.load_generator(str(tiny_workdir))


def _batch(loaded, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """Source and driving frames of synthetic clips (cross-clip pairs: different identities)."""
  size = loaded.config.image_size
  frames = []
  for i in range(batch_size):
    source = synthetic.render_frame(seed + i, 0, image_size=size, num_frames=8, seed=seed)
    driving = synthetic.render_frame(seed + i + 1, 5, image_size=size, num_frames=8, seed=seed)
    frames.append((source, driving))
  return {
    'source': np.stack([s['image'] for s, _ in frames]),
    'source_landmarks': np.stack([s['landmarks'] for s, _ in frames]),
    'driving_landmarks': np.stack([d['landmarks'] for _, d in frames]),
    'source_mask': np.stack([s['mask'] for s, _ in frames]),
    'source_matte': np.stack([s['matte'] for s, _ in frames]),
  }


@pytest.mark.slow  # ~45 s: the end-to-end export test in test_reenact stays fast.
def test_artifact_runs_without_flax_at_two_batch_sizes(artifact, tmp_path):
  folder, loaded = artifact
  for batch_size in BATCH_SIZES:
    np.savez(tmp_path / f'inputs{batch_size}.npz', **_batch(loaded, batch_size, seed=batch_size))
  # A fresh interpreter that only has the artifact: proves the loader needs neither flax nor the
  # model code, and that one artifact serves any batch size.
  script = textwrap.dedent(
    f"""
    import json, sys
    import numpy as np
    from reenact_jax import exported
    reenact = exported.load({str(folder)!r})
    for batch_size in {BATCH_SIZES!r}:
      inputs = np.load({str(tmp_path)!r} + f'/inputs{{batch_size}}.npz')
      outputs = reenact(*(inputs[name] for name in exported.INPUT_NAMES))
      np.savez({str(tmp_path)!r} + f'/outputs{{batch_size}}.npz',
               **{{k: np.asarray(v) for k, v in outputs.items()}})
    heavy = sorted(m for m in sys.modules
                   if m.split('.')[0] in ('flax', 'optax', 'orbax', 'ml_collections', 'configs')
                   or m.startswith('reenact_jax.') and m != 'reenact_jax.exported')
    print(json.dumps({{'heavy': heavy, 'platforms': reenact.platforms, 'step': reenact.step}}))
    """
  )
  result = subprocess.run(
    [sys.executable, '-c', script],
    cwd=tmp_path,
    env={'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['heavy'] == [], report['heavy']
  assert report['platforms'] == ['cpu', 'cuda', 'tpu']
  assert report['step'] == loaded.step == 3

  for batch_size in BATCH_SIZES:
    inputs = np.load(tmp_path / f'inputs{batch_size}.npz')
    got = np.load(tmp_path / f'outputs{batch_size}.npz')
    want = loaded({name: inputs[name] for name in exported.INPUT_NAMES})
    for name in ('output', 'foreground', 'alpha', 'background', 'projected', 'flow', 'occlusion'):
      assert got[name].shape == want[name].shape, name
      assert got[name].shape[0] == batch_size
      np.testing.assert_allclose(got[name], np.asarray(want[name]), atol=1e-4, err_msg=name)
    assert 0.0 <= got['output'].min() and got['output'].max() <= 1.0
  # Different examples give different frames (the batch is not collapsed or broadcast).
  assert np.abs(got['output'][0] - got['output'][1]).max() > 1e-3


def test_spec_lists_inputs_outputs_and_weights(artifact):
  folder, loaded = artifact
  spec = json.loads((folder / exported.SPEC_FILE).read_text())
  size = loaded.config.image_size
  num = loaded.config.model.num_landmarks
  inputs = {i['name']: i for i in spec['inputs']}
  assert list(inputs) == list(exported.INPUT_NAMES)
  assert inputs['source']['shape'] == ['b', size, size, 3]
  assert inputs['source_landmarks']['shape'] == ['b', num, 3]
  assert inputs['source_mask']['shape'] == ['b', size, size, 1]
  assert inputs['source_matte']['shape'] == ['b', size, size, 1]
  assert all(i['dtype'] == 'float32' and i['range'] for i in spec['inputs'])
  outputs = {o['name']: o for o in spec['outputs']}
  assert outputs['output']['shape'] == ['b', size, size, 3]
  assert outputs['alpha']['shape'] == ['b', size, size, 1]
  assert outputs['projected']['shape'] == ['b', size // 4, size // 4, 3]
  assert {'foreground', 'background'} <= set(outputs)
  assert spec['step'] == loaded.step and spec['image_size'] == size
  assert spec['platforms'] == ['cpu', 'cuda', 'tpu']
  assert '478' in spec['landmarks'] and '[-1, 1]' in spec['landmarks']
  # What an application needs around the generator: the crop framing, the face mask's polygon,
  # the landmarks of the rigid fit and the hole size.
  assert spec['preprocessing'] == crops.preprocessing_spec()
  assert spec['preprocessing']['face_mask_polygon'] == list(face_topology.FACE_OVAL)
  assert spec['preprocessing']['stable_landmarks'] == list(face_topology.STABLE)
  assert spec['config']['model']['volume_depth'] == loaded.config.model.volume_depth
  # The weights list matches the npz and the EMA parameters exactly.
  with np.load(folder / exported.WEIGHTS_FILE) as weights:
    assert sorted(weights.files) == sorted(w['path'] for w in spec['weights'])
    kernel = loaded.params['encoder']
    path = next(w['path'] for w in spec['weights'] if w['path'].startswith('encoder/'))
    for key in path.split('/')[1:]:
      kernel = kernel[key]
    np.testing.assert_array_equal(weights[path], kernel)
  assert spec['num_parameters'] == sum(np.size(x) for x in _leaves(loaded.params))


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def test_missing_weights_file_is_named(artifact, tmp_path):
  folder, _ = artifact
  broken = tmp_path / 'broken'
  shutil.copytree(folder, broken)
  (broken / exported.WEIGHTS_FILE).unlink()
  with pytest.raises(
    exported.ArtifactError, match=r'no weights\.npz.*python -m reenact_jax\.export'
  ):
    exported.load(broken)
  with pytest.raises(exported.ArtifactError, match='does not exist'):
    exported.load(tmp_path / 'nowhere')
  # A truncated weights file, and a spec that is JSON but not a spec: one clear error each.
  truncated = tmp_path / 'truncated'
  shutil.copytree(folder, truncated)
  weights = (folder / exported.WEIGHTS_FILE).read_bytes()
  (truncated / exported.WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
  with pytest.raises(exported.ArtifactError, match=r'not a readable \.npz'):
    exported.load(truncated)
  (truncated / exported.SPEC_FILE).write_text('[1, 2]')
  with pytest.raises(exported.ArtifactError, match='not an artifact spec'):
    exported.load(truncated)


def test_wrong_input_shapes_name_the_input(artifact):
  folder, loaded = artifact
  reenact = exported.load(folder)
  inputs = _batch(loaded, 2, seed=0)
  bad = dict(inputs, source_landmarks=inputs['source_landmarks'][:, :468])
  with pytest.raises(exported.InputError, match=r'source_landmarks.*\(2, 468, 3\).*\(b, 478, 3\)'):
    reenact(*(bad[name] for name in exported.INPUT_NAMES))
  bad = dict(inputs, source_mask=inputs['source_mask'][:1])
  with pytest.raises(exported.InputError, match='different batch sizes'):
    reenact(*(bad[name] for name in exported.INPUT_NAMES))
  bad = dict(inputs, source=(inputs['source'] * 255).astype(np.uint8))
  with pytest.raises(exported.InputError, match='source has dtype uint8'):
    reenact(*(bad[name] for name in exported.INPUT_NAMES))


def test_unwritable_output_and_missing_checkpoint_are_clear(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  with pytest.raises(exporter.ExportError, match='Cannot write the export to'):
    exporter.export_generator(str(tmp_path), str(blocker / 'export'))
  # The command line: one message on stderr, exit code 1, no traceback.
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'reenact_jax.export',
      f'--workdir={tmp_path / "empty_run"}',
      f'--output={tmp_path / "export"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1
  assert 'No checkpoints in' in result.stderr and 'reenact_jax.train' in result.stderr
  assert 'Traceback' not in result.stderr
