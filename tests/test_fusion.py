"""Several source views of one person (models.fusion): which view shows what, and that one view
given twice is the same as one view."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from reenact_jax import (
  augmentation,
  face_topology,
  geometry,
  inference,
  input_pipeline,
  models,
  records,
  sharding,
  trainer,
)
from reenact_jax.models import fusion
from tests import helpers


def _turned(degrees: float) -> np.ndarray:
  """The canonical face turned about the vertical axis (positive: its image-right side towards
  the camera), scaled into the crop."""
  canonical = face_topology.canonical_landmarks().astype(np.float32)
  centre = canonical.mean(0)
  angle = np.deg2rad(degrees)
  rotation = np.array(
    [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]], np.float32
  )
  return ((canonical - centre) @ rotation.T) * 0.8


def test_facing_sees_which_side_of_a_turned_face_is_turned_away():
  canonical = face_topology.canonical_landmarks()
  right = canonical[:, 0] > canonical[:, 0].mean()  # The image-right half.
  frontal, turned = np.asarray(geometry.facing(jnp.asarray(np.stack([_turned(0), _turned(60)]))))
  assert frontal.mean() > 0.5 and abs(frontal[right].mean() - frontal[~right].mean()) < 0.05
  # Turned 60 degrees: the right half faces the camera, the left half is seen edge-on or not.
  assert turned[right].mean() > 0.6 and turned[~right].mean() < 0.05
  # A mirrored face (its triangles' orientation flipped) faces away everywhere.
  mirrored = _turned(0) * np.float32([-1, 1, 1])
  assert np.asarray(geometry.facing(jnp.asarray(mirrored[None]))).mean() < -0.5


def test_pixel_weights_take_the_view_that_sees_each_side():
  # Driving frontal; the primary view turned to show its right side, the other its left.
  views = jnp.asarray(np.stack([_turned(50), _turned(-50)]))
  driving = jnp.asarray(np.stack([_turned(0)] * 2))
  # Both views are as far from the driving pose: their motions to it weigh the same.
  _, _, head_flow = geometry.initial_flow(
    views,
    driving,
    depth=16,
    height=32,
    width=32,
    sigma=0.08,
    stable_indices=face_topology.STABLE.reshape(-1),
  )
  logits, _, confidence = fusion.geometric_logits(
    views, driving, head_flow, 2, depth=16, height=32, width=32, sigma=0.08, sharpness=8.0
  )
  weights = fusion.view_weights(logits, 2)
  pixels = np.asarray(fusion.pixel_weights(weights, 8.0 * confidence, 32, 32))[0, :, :, :, 0]
  np.testing.assert_allclose(pixels.sum(0), 1.0, atol=1e-5)
  # Columns of the face's two cheeks, and the corner far from the face.
  cheek_rows = slice(14, 20)
  left, right = pixels[:, cheek_rows, 7:11].mean((1, 2)), pixels[:, cheek_rows, 21:25].mean((1, 2))
  assert right[0] > 0.8 and left[1] > 0.8, (left, right)
  assert pixels[0, 0, 0] > 0.99  # Off the face: the primary view (its background is the output's).


def _inputs(config, rng):
  size, num = config.image_size, config.model.num_landmarks
  landmarks = np.stack([_turned(10), _turned(-10)])[:, :num]
  yy, xx = np.mgrid[:size, :size]
  matte = (((xx - size / 2) / (size / 2.2)) ** 2 + ((yy - size / 2) / (size / 1.6)) ** 2) < 1
  matte = np.broadcast_to(matte[None, :, :, None], (2, size, size, 1)).astype(np.float32)
  return {
    'source': jnp.asarray(rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)),
    'source_landmarks': jnp.asarray(landmarks),
    'driving_landmarks': jnp.asarray(landmarks[::-1] + np.float32([0.03, -0.02, 0.0])),
    'source_mask': jnp.asarray(matte),
    'source_matte': jnp.asarray(matte),
  }


def _twice(inputs):
  return {
    **inputs,
    'extra_sources': inputs['source'][:, None],
    'extra_source_landmarks': inputs['source_landmarks'][:, None],
    'extra_source_mattes': inputs['source_matte'][:, None],
  }


# The learned head's case compiles a generator of its own (~35 s): in the slow suite.
@pytest.mark.parametrize('fusion_head', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_one_view_given_twice_renders_as_one_view(fusion_head):
  config = tiny.get_config()
  config.model.fusion_head = fusion_head
  generator = models.make_generator(config.model, config.image_size)
  # Compiled (as inference.render_fn compiles the renders): run op by op, the tiny generator's
  # init alone takes over a minute on 2 cores.
  params = jax.jit(functools.partial(models.init_params, generator))(jax.random.key(0, impl='rbg'))
  render, prior_render = (inference.render_fn(generator, prior_only=p) for p in (False, True))
  assert ('fusion' in params) == fusion_head
  inputs = _inputs(config, np.random.default_rng(0))
  if fusion_head:  # A trained head: its logits are no longer 0.
    params['fusion'] = jax.tree.map(lambda x: x + 0.3, params['fusion'])
  one = render(params, inputs)
  two = render(params, _twice(inputs))
  for name in ('output', 'alpha', 'warped_source', 'projected', 'occlusion', 'flow_2d'):
    np.testing.assert_allclose(two[name], one[name], atol=2e-5, err_msg=name)
  prior_one = prior_render(None, inputs)
  prior_two = prior_render(None, _twice(inputs))
  np.testing.assert_allclose(prior_two['output'], prior_one['output'], atol=2e-5)


def test_another_view_shows_its_pixels_where_it_sees_better():
  config = tiny.get_config()
  # The demo's volume is too coarse in depth to tell a cheek from its neighbour's slice.
  config.image_size, config.model.volume_depth, config.model.landmark_sigma = 64, 16, 0.08
  generator = models.make_generator(config.model, config.image_size)
  inputs = _inputs(config, np.random.default_rng(1))
  size = config.image_size
  red, blue = np.zeros((size, size, 3), np.float32), np.zeros((size, size, 3), np.float32)
  red[..., 0], blue[..., 2] = 1.0, 1.0
  views = jnp.asarray(np.stack([_turned(50), _turned(-50)])[None, :, : config.model.num_landmarks])
  inputs = {
    **{name: value[:1] for name, value in inputs.items()},
    'source': jnp.asarray(red[None]),
    'source_landmarks': views[:, 0],
    'driving_landmarks': jnp.asarray(_turned(0)[None, : config.model.num_landmarks]),
  }
  prior_render = inference.render_fn(generator, prior_only=True)
  one = np.asarray(prior_render(None, inputs)['output'])[0]
  both = {
    **inputs,
    'extra_sources': jnp.asarray(blue[None, None]),
    'extra_source_landmarks': views[:, 1:],
    'extra_source_mattes': inputs['source_matte'][:, None],
  }
  two = np.asarray(prior_render(None, both)['output'])[0]
  rows = slice(28, 40)
  # The primary (red) view turned its left cheek away: there the blue view shows; the right
  # cheek stays red, and with one view the whole face is red.
  assert one[rows, 14:22, 0].mean() > 0.9
  assert two[rows, 14:22, 2].mean() > 0.6 > two[rows, 14:22, 0].mean()
  assert two[rows, 42:50, 0].mean() > 0.8


class _Frames:
  """Two clips whose frames' landmark z holds the frame index (as in test_input_pipeline)."""

  clips = [records.Clip('a', 'a0', 0, 6), records.Clip('b', 'b0', 6, 6)]

  def frame(self, index):
    landmarks = np.zeros((478, 3), np.float32)
    landmarks[:, 2] = index
    return {
      'image': np.full((8, 8, 3), index / 16, np.float32),
      'landmarks': landmarks,
      'mask': np.ones((8, 8, 1), np.float32),
      'matte': np.ones((8, 8, 1), np.float32),
    }


def test_training_pairs_get_other_frames_of_their_clip_as_views():
  # Flips and colour jitter (no scale, which would move the landmarks' z, the frame index).
  augment = dataclasses.replace(
    augmentation.Augmentation.from_config(tiny.get_config().data),
    scale_jitter=0.0,
    translate_jitter=0.0,
  )
  assert augment.flip and augment.color_jitter
  plain = input_pipeline.MakePair(_Frames(), seed=4, augment=augment)
  several = input_pipeline.MakePair(_Frames(), seed=4, augment=augment, num_sources=3)
  for index in range(40):
    example = several.map(index)
    extras = example['extra_source_landmarks'][:, 0, 2].round().astype(int)
    source = int(round(example['source_landmarks'][0, 2]))
    driving = int(round(example['driving_landmarks'][0, 2]))
    assert example['extra_sources'].shape == (2, 8, 8, 3)
    # Other frames of the clip: not the source, not the target itself.
    assert source not in extras and driving not in extras
    assert all((e < 6) == (source < 6) for e in extras)
    # The pair's frames and augmentation are drawn as with one source.
    single = plain.map(index)
    np.testing.assert_array_equal(single['source'], example['source'])
    np.testing.assert_array_equal(single['driving'], example['driving'])
    assert 'extra_sources' not in single


def test_a_train_step_with_two_views_trains_the_fusion_head_in_the_warp_phase():
  config = helpers.config_with(**{'data.num_sources': 2, 'model.fusion_head': True})
  setup = trainer.Setup(config)
  batch = next(iter(input_pipeline.make_train_dataset(config)))
  assert batch['extra_sources'].shape == (config.train.batch_size, 1, 32, 32, 3)
  state = setup.init_state()
  before = jax.tree.map(np.asarray, state.generator_params)
  step = setup.compiled_train_step(warp_only=True)
  state, metrics = step(state, sharding.global_batch(batch, setup.mesh), setup.perceptual[0])
  after = jax.tree.map(np.asarray, state.generator_params)
  assert np.isfinite(float(metrics['loss/total']))
  changed = {
    name: any(
      np.any(a != b)
      for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True)
    )
    for name in before
  }
  assert changed == {
    'encoder': True,
    'flow_net': True,
    'projection': True,
    'fusion': True,
    'renderer': False,
    'inpainter': False,
  }, changed


def test_facing_works_without_the_irises():
  # A model of the 468 mesh landmarks (no irises) triangulates those alone.
  without = np.asarray(geometry.facing(jnp.asarray(_turned(60)[None, :468])))[0]
  with_irises = np.asarray(geometry.facing(jnp.asarray(_turned(60)[None])))[0]
  assert without.shape == (468,)
  right = face_topology.canonical_landmarks()[:468, 0] > 0
  assert without[right].mean() > 0.6 and without[~right].mean() < 0.05
  assert np.abs(without - with_irises[:468]).mean() < 0.1
