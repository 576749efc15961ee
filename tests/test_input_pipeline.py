"""The train input pipeline: pair sampling, augmentation, sharding, resumable state, bad records."""

import collections
import dataclasses
import json
import logging
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from reenact_jax import (
  augmentation,
  benchmarks,
  face_topology,
  input_pipeline,
  records,
  synthetic,
  warp,
)
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_AUGMENTATION = {
  'data.flip': False,
  'data.color_jitter': 0.0,
  'data.scale_jitter': 0.0,
  'data.translate_jitter': 0.0,
}


_config = helpers.config_with


class IndexFrames:
  """Frames whose landmarks' z holds the global frame index exactly (no augmentation moves it)."""

  def __init__(self, clip_sizes: dict[str, list[int]], image_size: int = 8):
    self.clips = []
    first = 0
    for identity, sizes in clip_sizes.items():
      for number, size in enumerate(sizes):
        self.clips.append(records.Clip(identity, f'{identity}/{number}', first, size))
        first += size
    self._image_size = image_size

  def frame(self, index):
    size = self._image_size
    landmarks = np.zeros((478, 3), np.float32)
    landmarks[:, 2] = index
    return {
      'image': np.full((size, size, 3), (index % 256) / 255, np.float32),
      'landmarks': landmarks,
      'mask': np.ones((size, size, 1), np.float32),
      'matte': np.ones((size, size, 1), np.float32),
    }


def _frame_indices(batch, key):
  return batch[f'{key}_landmarks'][:, 0, 2].astype(np.int64)


def _clip_of(frames, index):
  return next(c for c in frames.clips if c.first <= index < c.first + c.num_frames)


def test_pairs_come_from_one_clip_and_respect_the_frame_gap():
  frames = IndexFrames({'a': [5, 7], 'b': [4], 'c': [9, 3, 6]})
  for gap in (0, 2):
    config = _config(**NO_AUGMENTATION, **{'data.max_frame_gap': gap, 'train.batch_size': 8})
    iterator = iter(input_pipeline.make_train_dataset(config, frames, shard_index=0, shard_count=1))
    seen_clips = set()
    for _ in range(12):
      batch = next(iterator)
      for source, driving in zip(
        _frame_indices(batch, 'source'), _frame_indices(batch, 'driving'), strict=True
      ):
        clip = _clip_of(frames, source)
        assert _clip_of(frames, driving) == clip, (source, driving)
        if gap:
          assert abs(int(source) - int(driving)) <= gap
        seen_clips.add(clip.name)
      # The image is the frame the landmarks say it is.
      np.testing.assert_allclose(
        batch['source'][:, 0, 0, 0], (_frame_indices(batch, 'source') % 256) / 255, atol=1e-6
      )
    assert len(seen_clips) == 6


def test_identities_are_drawn_uniformly_whatever_their_clip_and_frame_counts():
  frames = IndexFrames({'small': [2], 'big': [50] * 10, 'medium': [20, 30, 3], 'one': [1]})
  make_pair = input_pipeline.MakePair(frames, seed=3, augment=None)
  draws = 6000
  identities = collections.Counter(
    _clip_of(frames, make_pair.indices(i)[0]).identity for i in range(draws)
  )
  # 'one' has a single frame: nothing to pair, so it is never drawn.
  assert set(identities) == {'small', 'big', 'medium'}
  for count in identities.values():
    assert abs(count / draws - 1 / 3) < 0.03, identities  # Frame-uniform: 'small' 2/555.
  # Within an identity, clips are drawn uniformly too.
  big_clips = collections.Counter(
    _clip_of(frames, make_pair.indices(i)[0]).name
    for i in range(draws)
    if _clip_of(frames, make_pair.indices(i)[0]).identity == 'big'
  )
  assert len(big_clips) == 10 and max(big_clips.values()) < 2 * min(big_clips.values())


def _marked_frame(size=64):
  """A frontal canonical face: dark image with one bright dot on the right-eye centre."""
  landmarks = face_topology.canonical_landmarks().astype(np.float32)
  image = np.zeros((size, size, 3), np.float32)
  right = landmarks[face_topology.RIGHT_EYE, :2].mean(axis=0)
  column, row = ((right + 1) * size / 2).astype(int)
  image[row - 1 : row + 2, column - 1 : column + 2] = 1.0
  mask = np.zeros((size, size, 1), np.float32)
  mask[: size // 2] = 1.0
  matte = np.zeros((size, size, 1), np.float32)
  matte[:, size // 4 :] = 1.0
  return {'image': image, 'landmarks': landmarks, 'mask': mask, 'matte': matte}


def _bright_spot(image):
  """Continuous pixel position (x, y) of the bright dot's centroid, normalised to [-1, 1]."""
  weights = image[..., 0] > 0.5
  rows, columns = np.nonzero(weights)
  height, width = weights.shape
  return np.array([2 * (columns.mean() + 0.5) / width - 1, 2 * (rows.mean() + 0.5) / height - 1])


def test_flip_keeps_the_left_eye_the_left_eye():
  frame = _marked_frame()
  flipped = augmentation.flip_frame(frame)
  left, right = (
    flipped['landmarks'][indices, 0].mean()
    for indices in (face_topology.LEFT_EYE, face_topology.RIGHT_EYE)
  )
  original_left = frame['landmarks'][face_topology.LEFT_EYE, 0].mean()
  original_right = frame['landmarks'][face_topology.RIGHT_EYE, 0].mean()
  # MediaPipe's LEFT_EYE is the subject's left eye, image-right in a frontal face. The mirror
  # image is a person whose left eye is again image-right: the order of the eyes' x is kept
  # (a flip without remapping would swap it).
  assert original_left > original_right and left > right
  # The dot drawn on the original right eye is, in the mirror image, on its left eye.
  spot = _bright_spot(flipped['image'])
  assert np.linalg.norm(spot - flipped['landmarks'][face_topology.LEFT_EYE, :2].mean(0)) < 0.05
  np.testing.assert_array_equal(flipped['mask'], frame['mask'][:, ::-1])


@pytest.mark.parametrize('seed', range(4))
def test_fused_augmentation_equals_flip_then_affine_then_colour(seed):
  """augment_pair (one warp, one colour matrix) against the step-by-step definition."""
  frames = [
    synthetic.render_frame(2, index, image_size=64, num_frames=8, seed=0) for index in (1, 5)
  ]
  augment = augmentation.Augmentation(
    flip=True, color_jitter=0.3, scale_jitter=0.1, translate_jitter=0.1
  )
  fast = augmentation.augment_pair(*frames, np.random.default_rng(seed), augment)

  rng = np.random.default_rng(seed)
  expected = frames
  if rng.random() < 0.5:
    expected = [augmentation.flip_frame(frame) for frame in expected]
  scale = 1.0 + rng.uniform(-0.1, 0.1)
  translate = tuple(rng.uniform(-0.1, 0.1, size=2) * 2.0)
  expected = [augmentation.affine_frame(frame, scale, translate) for frame in expected]
  state = rng.bit_generator.state
  for frame in expected:
    rng.bit_generator.state = state  # Same colour factors for both frames.
    frame['image'] = augmentation.color_jitter(frame['image'], rng, 0.3)

  for got, want in zip(fast, expected, strict=True):
    assert got['image'].dtype == np.float32 and got['image'].shape == (64, 64, 3)
    np.testing.assert_allclose(got['image'], want['image'], atol=2e-3)
    np.testing.assert_allclose(got['landmarks'], want['landmarks'], atol=1e-6)
    assert np.mean(got['mask'] != want['mask']) < 0.005
    np.testing.assert_allclose(got['matte'], want['matte'], atol=2e-3)


def test_a_source_occluder_covers_the_source_face_only_and_changes_nothing_else():
  """With data.source_occluders the source (not the driving frame) gets a hand or an object over
  its face, its coverage travels as 'source_occluder', and every other draw stays as it was."""
  frames = [
    synthetic.render_frame(2, index, image_size=96, num_frames=8, seed=0) for index in (1, 5)
  ]
  plain = augmentation.Augmentation(
    flip=True, color_jitter=0.2, scale_jitter=0.1, translate_jitter=0.1
  )
  occluded = dataclasses.replace(plain, source_occluders=1.0)
  for seed in range(4):
    want = augmentation.augment_pair(*[dict(f) for f in frames], np.random.default_rng(seed), plain)
    got = augmentation.augment_pair(
      *[dict(f) for f in frames], np.random.default_rng(seed), occluded
    )
    np.testing.assert_array_equal(got[1]['image'], want[1]['image'])  # The driving frame.
    cover = got[0]['occluder'][..., 0]
    assert cover.shape == (96, 96) and 0.02 < (cover > 0.5).mean() < 0.4, seed
    assert (cover[got[0]['mask'][..., 0] > 0.5] > 0.5).any(), seed  # On the face.
    untouched = cover == 0
    np.testing.assert_array_equal(got[0]['image'][untouched], want[0]['image'][untouched])
    assert np.abs(got[0]['image'] - want[0]['image'])[cover > 0.9].mean() > 0.02
    example = input_pipeline.pair_to_example(*got)
    np.testing.assert_array_equal(example['source_occluder'][..., 0], cover)
    assert not input_pipeline.pair_to_example(*want)['source_occluder'].any()


def test_augmented_image_follows_the_augmented_landmarks():
  """The dot on the right eye stays on the (remapped) eye landmarks through flip + scale + shift."""
  frame = _marked_frame(size=96)
  augment = augmentation.Augmentation(
    flip=True, color_jitter=0.0, scale_jitter=0.15, translate_jitter=0.1
  )
  flips = set()
  for seed in range(8):
    rng = np.random.default_rng(seed)
    flipped = rng.random() < 0.5
    source, _ = augmentation.augment_pair(frame, frame, np.random.default_rng(seed), augment)
    eye = face_topology.LEFT_EYE if flipped else face_topology.RIGHT_EYE
    spot = _bright_spot(source['image'])
    assert np.linalg.norm(spot - source['landmarks'][eye, :2].mean(0)) < 0.04, seed
    flips.add(flipped)
  assert flips == {True, False}


def test_shards_read_disjoint_parts_of_the_same_stream():
  frames = IndexFrames({'only': [100_000]})
  config = _config(**NO_AUGMENTATION, **{'train.batch_size': 4})

  def pairs(shard_index, shard_count, num_batches):
    iterator = iter(
      input_pipeline.make_train_dataset(
        config, frames, **dict(shard_index=shard_index, shard_count=shard_count)
      )
    )
    out = []
    for _ in range(num_batches):
      batch = next(iterator)
      assert batch['source'].shape[0] == 4 // shard_count
      out += list(
        zip(_frame_indices(batch, 'source'), _frame_indices(batch, 'driving'), strict=True)
      )
    return out

  everything = pairs(0, 1, 3)
  first, second = pairs(0, 2, 3), pairs(1, 2, 3)
  assert len(set(everything)) == 12
  assert not set(first) & set(second)
  # Shard k of 2 holds the stream's pairs k, k + 2, k + 4, ...
  assert first == everything[0::2] and second == everything[1::2]
  with pytest.raises(ValueError, match='shard_index'):
    input_pipeline.make_train_dataset(config, frames, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match='not divisible'):
    input_pipeline.make_train_dataset(config, frames, shard_index=0, shard_count=3)


@pytest.mark.parametrize('num_threads', [1, 3])
def test_restored_iterator_state_continues_with_the_same_batches(num_threads):
  config = _config(**{'train.batch_size': 3, 'data.num_threads': num_threads})
  frames = input_pipeline.make_frame_source(config, 'train')

  def iterator():
    return input_pipeline.Iterator(
      input_pipeline.make_train_dataset(config, frames, shard_index=0, shard_count=1)
    )

  first = iterator()
  for _ in range(3):
    next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(2)]
  restored = iterator()
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # And it is not trivially the stream's start.
  assert not np.array_equal(next(iterator())['source'], expected[0]['source'])


_WORKERS_SCRIPT = """
import numpy as np
from configs import tiny
from reenact_jax import input_pipeline


def batches(num_workers, state=None, count=3):
  config = tiny.get_config()
  config.train.batch_size = 2
  config.data.num_workers = num_workers
  iterator = input_pipeline.Iterator(
    input_pipeline.make_train_dataset(config, shard_index=0, shard_count=1)
  )
  if state is not None:
    iterator.set_state(state)
  out = [next(iterator) for _ in range(count)]
  return out, iterator.get_state()


if __name__ == '__main__':
  in_process, _ = batches(0, count=4)
  with_workers, state = batches(2, count=2)
  resumed, _ = batches(2, state=state, count=2)
  for got, want in zip(with_workers + resumed, in_process):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  print('SAME')
"""


@pytest.mark.slow  # ~25 s: grain worker processes start.
def test_worker_processes_give_the_same_stream_and_resume_exactly(tmp_path):
  script = tmp_path / 'workers.py'
  script.write_text(_WORKERS_SCRIPT)
  result = subprocess.run(
    [sys.executable, str(script)],
    cwd=ROOT,
    env={'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0 and 'SAME' in result.stdout, result.stderr[-3000:]


def _corrupt_copy(data_dir, destination, bad_record):
  from array_record.python.array_record_module import ArrayRecordWriter

  shutil.copytree(data_dir, destination)
  source, _ = records.open_split(destination, 'train')
  raw = [source[i] for i in range(len(source))]
  shard = records.split_shards(destination, 'train')[0]
  writer = ArrayRecordWriter(str(shard), 'group_size:1')
  for number, record in enumerate(raw):
    writer.write(record[: len(record) // 3] if number == bad_record else record)
  writer.close()
  return shard


def test_corrupt_record_names_its_shard_or_is_counted_and_logged(
  carphone_cache_64, tmp_path, caplog
):
  config = _config(
    **{
      'image_size': 64,
      'train.batch_size': 2,
      'data.source': 'arrayrecord',
      'data.dir': str(tmp_path / 'data'),
      'data.num_threads': 1,
    }
  )
  frames = input_pipeline.make_frame_source(
    _config(**{'image_size': 64, 'data.source': 'demo', 'data.cache_dir': str(carphone_cache_64)}),
    'train',
  )
  # Corrupt the source frame of the stream's first pair, so the first batch reads it.
  make_pair = input_pipeline.MakePair(frames, seed=config.seed, augment=None)
  bad = make_pair.indices(0)[0]
  shard = _corrupt_copy(frames.data_dir, tmp_path / 'data', bad)

  strict = input_pipeline.make_train_dataset(config, shard_index=0, shard_count=1)
  with pytest.raises(records.RecordDecodeError, match=f'{shard.name} record {bad} '):
    next(iter(strict))

  config.data.skip_corrupt = True
  lenient_frames = input_pipeline.make_frame_source(config, 'train')
  lenient = input_pipeline.make_train_dataset(config, lenient_frames, shard_index=0, shard_count=1)
  with caplog.at_level(logging.WARNING):
    batch = next(iter(lenient))
  assert np.isfinite(batch['source']).all() and batch['source'].shape == (2, 64, 64, 3)
  assert lenient_frames.corrupt_records >= 1
  assert any(f'record {bad} ' in message for message in caplog.messages)


def test_measure_throughput_reports_pairs_per_second():
  config = _config(**{'train.batch_size': 4, 'data.num_threads': 2})
  result = benchmarks.measure_throughput(config, num_batches=2, warmup_batches=1)
  assert result['pairs_per_sec'] > 0 and result['cpu_ms_per_pair'] > 0
  assert {
    key: result[key] for key in ('num_workers', 'num_threads', 'batch_size', 'image_size')
  } == {
    'num_workers': 0,
    'num_threads': 2,
    'batch_size': 4,
    'image_size': 32,
  }


_DEMO_SCRIPT = """
import json
import sys

from configs import demo
from reenact_jax import trainer

config = demo.get_config()
config.image_size = 64
config.train.batch_size = 2
config.train.total_steps = 2
config.train.phase1_steps = 0  # Both steps train the full model: one compile.
config.train.log_every = 1
config.train.image_log_every = 0
config.train.checkpoint_every = 2
config.data.cache_dir = sys.argv[1]
print(json.dumps(trainer.train_and_evaluate(config, sys.argv[2])))
"""


def _face_error(batch, flow):
  """Mean |source moved by flow - driving| on the driving faces."""
  moved = np.asarray(warp.warp_2d(jnp.asarray(batch['source']), jnp.asarray(flow)))
  mask = batch['driving_mask']
  return float((np.abs(moved - batch['driving']) * mask).sum() / mask.sum())


def test_the_known_flow_moves_the_source_onto_the_driving_frame():
  """The true motion that pairs carry ('driving_flow') is a backward flow from the driving frame
  to the source, also after the pair's common flip, scale and shift.

  Synthetic pairs (their shading and mouth change too, so the match is partial; measured 0.69 of
  the unmoved error, and 0.90 with the flip's x sign dropped, 0.83 with the field not moved by
  the augmentation) and a re-posed portrait (exact up to interpolation).
  """
  config = _config(
    **{
      'train.batch_size': 32,
      'data.flip': True,
      'data.scale_jitter': 0.15,
      'data.translate_jitter': 0.05,
      'data.color_jitter': 0.0,
    }
  )
  batch = next(iter(input_pipeline.make_train_dataset(config)))
  assert np.all(batch['flow_known'] == 1.0)
  unmoved = _face_error(batch, np.zeros_like(batch['driving_flow']))
  assert _face_error(batch, batch['driving_flow']) < 0.78 * unmoved
  assert _face_error(batch, -batch['driving_flow']) > unmoved

  frame = synthetic.render_frame(3, 0, image_size=64, num_frames=8, seed=0)
  image, _, mask, _, flow = augmentation.repose(
    frame['image'],
    frame['landmarks'],
    frame['matte'],
    rng=np.random.default_rng(1),
    max_rotation_deg=15.0,
    max_scale=0.1,
    max_translation=0.08,
    with_flow=True,
  )
  pair = {'source': frame['image'][None], 'driving': image[None], 'driving_mask': mask[None]}
  unmoved = _face_error(pair, np.zeros_like(flow[None]))
  assert _face_error(pair, flow[None]) < 0.05 * unmoved, unmoved
  # Without a known motion, an example says so.
  example = input_pipeline.pair_to_example(frame, frame)
  assert example['flow_known'] == 0.0 and not example['driving_flow'].any()


@pytest.mark.slow
def test_demo_config_trains_two_steps_with_finite_losses(carphone_cache_64, tmp_path):
  """configs/demo.py (carphone + portrait pseudo-pairs) at 64x64, batch 2, on one CPU device.

  A subprocess, because batch 2 does not split over this session's 8 fake devices, and one
  device compiles faster.
  """
  result = subprocess.run(
    [sys.executable, '-c', _DEMO_SCRIPT, str(carphone_cache_64), str(tmp_path / 'run')],
    cwd=ROOT,
    env={
      'PYTHONPATH': str(ROOT),
      'JAX_PLATFORMS': 'cpu',
      'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
      'PATH': '/usr/bin:/bin',
      'HOME': str(tmp_path),
    },
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['phase'] == 2.0, metrics  # The last step trained the whole model.
  for name, value in metrics.items():
    assert np.isfinite(value), (name, value)
  assert metrics['loss/total'] > 0
