"""Tests of reenact_jax.models on the tiny config (batch 2, 32×32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from reenact_jax import crops, face_topology, geometry, inference, models
from reenact_jax.models import layers
from tests.helpers import config_with

BATCH = 2


def _config(**overrides):
  config = tiny.get_config()
  for key, value in overrides.items():
    config.model[key] = value
  return config


def _inputs(config, seed=0, same_landmarks=False):
  rng = np.random.default_rng(seed)
  size = config.image_size
  num = config.model.num_landmarks
  source_landmarks = rng.uniform(-0.6, 0.6, (BATCH, num, 3)).astype(np.float32)
  source_landmarks[..., 2] -= source_landmarks[..., 2].mean(axis=1, keepdims=True)
  if same_landmarks:
    driving_landmarks = source_landmarks.copy()
  else:
    # A small head motion: rotation about the vertical axis, shift and a mouth-like jitter.
    angle = 0.2
    rotation = np.array(
      [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]],
      np.float32,
    )
    driving_landmarks = source_landmarks @ rotation.T + np.float32([0.05, -0.03, 0.0])
    driving_landmarks += rng.normal(0, 0.01, driving_landmarks.shape).astype(np.float32)
  yy, xx = np.mgrid[:size, :size]
  mask = ((xx - size / 2) ** 2 / (size / 3) ** 2 + (yy - size / 2) ** 2 / (size / 2.5) ** 2) < 1
  mask = np.broadcast_to(mask[None, :, :, None], (BATCH, size, size, 1)).astype(np.float32)
  # The person: a wider ellipse down to the bottom edge (head, neck, shoulders).
  matte = ((xx - size / 2) ** 2 / (size / 2.2) ** 2 + (yy - size / 2) ** 2 / (size / 1.6) ** 2) < 1
  matte = np.broadcast_to(matte[None, :, :, None], (BATCH, size, size, 1)).astype(np.float32)
  return dict(
    source=jnp.asarray(rng.uniform(0, 1, (BATCH, size, size, 3)).astype(np.float32)),
    source_landmarks=jnp.asarray(source_landmarks),
    driving_landmarks=jnp.asarray(driving_landmarks),
    source_mask=jnp.asarray(mask),
    source_matte=jnp.asarray(matte),
  )


def _key(seed):
  # RngBitGenerator keys: the init compiles ~4× faster than with threefry on CPU.
  return jax.random.key(seed, impl='rbg')


@pytest.fixture(scope='module')
def setup():
  config = _config()
  generator = models.make_generator(config.model, config.image_size)
  inputs = _inputs(config)
  params = jax.jit(generator.init)(_key(0), **inputs)['params']
  apply = jax.jit(generator.apply, static_argnames=('with_cycle', 'warp_only'))
  outputs = apply({'params': params}, **inputs, with_cycle=True)
  return config, generator, params, inputs, apply, outputs


def test_output_shapes_and_ranges(setup):
  config, _, _, _, _, outputs = setup
  size, low = config.image_size, config.image_size // 4
  depth = config.model.volume_depth
  expected = {
    'projected': (BATCH, low, low, 3),
    'projected_cycle': (BATCH, low, low, 3),
    'flow': (BATCH, depth, low, low, 3),
    'flow_prior': (BATCH, depth, low, low, 3),
    'confidence': (BATCH, depth, low, low, 1),
    'occlusion': (BATCH, low, low, 1),
    'flow_2d': (BATCH, size, size, 2),
    'warped_source': (BATCH, size, size, 3),
    'validity': (BATCH, size, size, 1),
    'unseen_mouth': (BATCH, size, size, 1),
    'foreground': (BATCH, size, size, 3),
    'alpha': (BATCH, size, size, 1),
    'background': (BATCH, size, size, 3),
    'inpainted': (BATCH, size, size, 3),
    'output': (BATCH, size, size, 3),
  }
  assert set(outputs) == set(expected)
  for key, shape in expected.items():
    value = np.asarray(outputs[key])
    assert value.shape == shape, key
    assert value.dtype == np.float32, key
    assert np.all(np.isfinite(value)), key
    if key not in ('flow', 'flow_prior', 'flow_2d'):
      assert value.min() >= 0.0 and value.max() <= 1.0, key
  # The prior dominates at initialisation: the residual is bounded and starts near zero.
  residual = np.abs(np.asarray(outputs['flow'] - outputs['flow_prior']))
  assert residual.max() < 0.05 * config.model.flow_residual_scale
  # The composite is what the renderer and the inpainter say it is.
  composite = (
    outputs['alpha'] * outputs['foreground'] + (1 - outputs['alpha']) * outputs['background']
  )
  np.testing.assert_allclose(outputs['output'], composite, atol=1e-6)


def test_warp_only_skips_renderer_and_cycle_shares_the_flow_net(setup):
  _, generator, params, inputs, apply, full = setup
  # Training phase 1 runs warp_only with the cycle.
  outputs = apply({'params': params}, **inputs, warp_only=True, with_cycle=True)
  assert set(outputs) == {
    'projected',
    'projected_cycle',
    'flow',
    'flow_prior',
    'confidence',
    'occlusion',
    'flow_2d',
  }
  for key in outputs:
    np.testing.assert_allclose(outputs[key], full[key], atol=1e-6, err_msg=key)
  # The cycle reuses the same flow network and projection: no new parameters.
  shapes = jax.eval_shape(lambda: generator.init(_key(0), **inputs, with_cycle=True)['params'])
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)


def test_identical_landmarks_give_zero_prior(setup):
  config, _, params, _, apply, _ = setup
  inputs = _inputs(config, seed=1, same_landmarks=True)
  outputs = apply({'params': params}, **inputs, warp_only=True, with_cycle=True)
  np.testing.assert_allclose(outputs['flow_prior'], 0.0, atol=1e-5)
  # No motion: the warp is (nearly, the residual starts near zero) the identity both ways.
  np.testing.assert_allclose(outputs['projected_cycle'], outputs['projected'], atol=5e-3)


def test_an_untrained_generator_shows_the_geometric_prior(setup):
  # The renderer's and inpainter's heads start at zero: before any training the output is the
  # source's own pixels moved by the prior (models.prior_render), up to the renderer's initial
  # trust in them (sigmoid(4)) and its alpha's softness; where the driver's mouth opens wider
  # than the source's (models.unseen_mouth) the renderer paints, starting from the prior's dark
  # inside (model.paint_from_warped), or from grey as runs saved before it did.
  _, generator, params, inputs, apply, outputs = setup
  assert generator.paint_from_warped
  prior = _prior_render(generator, inputs)
  unseen = np.asarray(
    models.unseen_mouth(inputs['source_landmarks'], inputs['driving_landmarks'], outputs['flow_2d'])
  )
  assert (unseen > 0.5).sum() > 20
  difference = np.abs(np.asarray(outputs['output']) - np.asarray(prior['output']))
  assert difference.mean() < 0.01 and difference.max() < 0.1, (difference.mean(), difference.max())
  in_mouth = np.broadcast_to(unseen > 0.5, difference.shape)
  assert difference[in_mouth].mean() < 0.02
  grey = generator.clone(paint_from_warped=False)
  from_grey = jax.jit(grey.apply)({'params': params}, **inputs)['output']
  from_grey = np.abs(np.asarray(from_grey) - np.asarray(prior['output']))
  assert from_grey[in_mouth].mean() > 0.1
  outside = np.broadcast_to(unseen == 0.0, difference.shape)  # Elsewhere grey is 2% at most.
  assert from_grey[outside].max() < 1.0 - float(jax.nn.sigmoid(4.0)) + 1e-3
  # A renderer that learned to drop invalid pixels to the background (alpha ~0 everywhere)
  # still shows the person in the driving face and the unseen mouth inside it.
  bias = params['renderer']['head']['bias']
  dropping = {
    **params,
    'renderer': {
      **params['renderer'],
      'head': {**params['renderer']['head'], 'bias': bias.at[4].set(-30.0)},
    },
  }
  # With model.alpha_from_warp the outline is the moved person wherever the warp has the
  # source's pixels (the prior's alpha there), whatever the renderer's alpha.
  assert generator.alpha_from_warp
  dropped = apply({'params': dropping}, **inputs, with_cycle=True)
  alpha = np.asarray(dropped['alpha'])
  face = np.asarray(models.driving_face(inputs['driving_landmarks'], alpha.shape[1]))
  assert np.all(alpha[unseen > 0.5] > 0.5) and np.all(alpha[face == 1.0] == 1.0)
  valid = np.asarray(prior['validity']) > 0.999
  person = valid & (np.asarray(prior['alpha']) > 0.5) & (face == 0.0)
  assert person.sum() > 50
  np.testing.assert_allclose(
    alpha[valid & (face == 0.0)], prior['alpha'][valid & (face == 0.0)], atol=2e-3
  )
  # Runs saved before it: the renderer's alpha everywhere, here ~0 off the driving face.
  apply_learned = jax.jit(generator.clone(alpha_from_warp=False).apply)
  learned = np.asarray(apply_learned({'params': dropping}, **inputs)['alpha'])
  assert np.all(learned[face == 1.0] == 1.0) and np.median(learned[face == 0.0]) < 1e-6
  assert np.median(learned[person]) < 1e-6
  # The inpainter starts as the classical fill (its output differs only through the tiny initial
  # flow correction, which moves where the head uncovers the background).
  background = np.abs(np.asarray(outputs['background']) - np.asarray(prior['background']))
  assert background.mean() < 1e-3 and background.max() < 0.02
  # And the prior differs from the unmoved source: it moved the head.
  assert np.abs(np.asarray(prior['output']) - np.asarray(inputs['source'])).mean() > 0.02


def test_background_equals_source_outside_the_hole_exactly(setup):
  _, _, params, inputs, apply, _ = setup
  rng = np.random.default_rng(3)
  matte = jnp.asarray((rng.uniform(size=inputs['source_matte'].shape) < 0.2).astype(np.float32))
  outputs = apply({'params': params}, **{**inputs, 'source_matte': matte}, with_cycle=True)
  hole = np.asarray(geometry.hole_of(matte))
  assert 0.3 < hole.mean() < 0.99  # The dilated matte.
  outside = np.broadcast_to(hole == 0, outputs['background'].shape)
  assert np.array_equal(
    np.asarray(outputs['background'])[outside], np.asarray(inputs['source'])[outside]
  )
  # Where the head moved away inside the hole, the background shows the fill, not the source.
  inside = ~outside
  moved_away = np.abs(np.asarray(outputs['background']) - np.asarray(inputs['source']))[inside]
  assert moved_away.max() > 0.1
  # A head that does not move uncovers nothing: the background is the source everywhere.
  still = {**inputs, 'source_matte': matte, 'driving_landmarks': inputs['source_landmarks']}
  outputs = apply({'params': params}, **still, with_cycle=True)
  # (The untrained flow network's residual moves it by a hair: differences of ~1e-3.)
  np.testing.assert_allclose(outputs['background'], inputs['source'], atol=0.02)


def test_fill_keeps_known_colours_and_fills_holes_from_their_border():
  from reenact_jax.models import layers

  # A soft-edged hole in an image of one colour: every pixel of the background fill is that
  # colour (a partly known pixel must not be darkened by its weight: no outline around the old
  # head), known pixels are kept exactly.
  size = 32
  yy, xx = np.mgrid[:size, :size]
  distance = np.hypot(yy - 15.5, xx - 15.5)
  hole = np.clip((9.0 - distance) / 3.0, 0.0, 1.0)[None, :, :, None].astype(np.float32)
  colour = np.array([0.8, 0.5, 0.2], np.float32)
  image = np.broadcast_to(colour, (1, size, size, 3)).copy()
  image[hole[..., 0] == 1.0] = 0.0  # The hole's content is unknown.
  filled = np.asarray(models.background_fill(jnp.asarray(image), jnp.asarray(hole)))
  np.testing.assert_allclose(filled, np.broadcast_to(colour, filled.shape), atol=1e-5)
  # Two colours, left and right: the hole takes the colour of the border nearest to it.
  image = np.zeros((1, size, size, 3), np.float32)
  image[:, :, : size // 2] = 1.0
  known = np.ones((1, size, size, 1), np.float32)
  known[:, 12:20, 2:8] = 0.0
  filled = np.asarray(layers.fill_holes(jnp.asarray(image), jnp.asarray(known)))
  assert filled[0, 12:20, 2:8].min() > 0.9
  np.testing.assert_array_equal(filled[known[..., 0] == 1.0], image[known[..., 0] == 1.0])


@pytest.mark.slow  # ~25 s: a bfloat16 generator compiled.
def test_bfloat16_compute_keeps_float32_params(setup):
  _, _, params, inputs, _, outputs32 = setup
  config16 = _config(compute_dtype='bfloat16')
  generator16 = models.make_generator(config16.model, config16.image_size)
  params16 = jax.eval_shape(lambda: generator16.init(_key(0), **inputs)['params'])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params16))
  assert jax.tree_util.tree_structure(params16) == jax.tree_util.tree_structure(params)
  outputs16 = jax.jit(generator16.apply)({'params': params}, **inputs)
  for key, value in outputs16.items():
    assert value.dtype == jnp.float32, key
    assert np.all(np.isfinite(np.asarray(value))), key
    np.testing.assert_allclose(value, outputs32[key], atol=0.05, err_msg=key)


@pytest.mark.slow
def test_remat_gradients_reach_every_part_and_outputs_match(setup):
  # One compiled backward pass serves two checks: remat changes nothing in the outputs, and
  # gradients flow (finite, non-zero) into every part of the generator.
  _, _, params, inputs, _, reference = setup
  config_remat = _config(remat=True)
  generator_remat = models.make_generator(config_remat.model, config_remat.image_size)

  def loss(params):
    outputs = generator_remat.apply({'params': params}, **inputs)
    return jnp.mean(outputs['output']) + jnp.mean(outputs['projected']), outputs

  grads, outputs = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert 'projected_cycle' not in outputs
  for key in outputs:
    np.testing.assert_allclose(outputs[key], reference[key], atol=1e-5, err_msg=key)
  for part in ('encoder', 'flow_net', 'projection', 'renderer', 'inpainter'):
    leaves = jax.tree_util.tree_leaves(grads[part])
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves), part
    assert sum(float(jnp.sum(jnp.abs(leaf))) for leaf in leaves) > 0, part
  # The flow network learns from the warp itself, not only through the occlusion map.
  head = grads['flow_net']['residual_head']
  assert sum(float(jnp.sum(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(head)) > 0


@pytest.mark.parametrize('stride', [1, 2])
def test_the_3d_convolution_as_a_2d_one_has_the_same_weights_values_and_gradients(stride):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8, 8, 3))
  native = layers.VolumeConv(4, stride=stride)
  lowered = layers.VolumeConv(4, stride=stride, depth_in_channels=True)
  params = native.init(jax.random.PRNGKey(1), x)
  lowered_params = lowered.init(jax.random.PRNGKey(1), x)
  # Same parameter tree and initial values: checkpoints of either lowering load in the other.
  assert jax.tree.structure(params) == jax.tree.structure(lowered_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(lowered_params), strict=True):
    np.testing.assert_array_equal(a, b)
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
  )

  def loss(module, params, x):
    y = module.apply(params, x)
    return jnp.sum(y * jnp.arange(y.size).reshape(y.shape) / y.size), y

  (value, y), grads = jax.value_and_grad(
    lambda p, x: loss(native, p, x), argnums=(0, 1), has_aux=True
  )(params, x)
  (lowered_value, lowered_y), lowered_grads = jax.value_and_grad(
    lambda p, x: loss(lowered, p, x), argnums=(0, 1), has_aux=True
  )(params, x)
  assert y.shape == (2, 5, 8 // stride, 8 // stride, 4)
  np.testing.assert_allclose(lowered_y, y, atol=1e-5)
  for a, b in zip(jax.tree.leaves(lowered_grads), jax.tree.leaves(grads), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_the_generator_renders_the_same_with_its_3d_convolutions_as_2d_ones(setup):
  _, _, params, inputs, _, reference = setup
  config = _config(volume_conv_lowering='depth_in_channels')
  generator = models.make_generator(config.model, config.image_size)
  outputs = jax.jit(generator.apply)({'params': params}, **inputs)
  for key in ('projected', 'flow', 'output'):
    np.testing.assert_allclose(outputs[key], reference[key], atol=1e-5, err_msg=key)
  with pytest.raises(ValueError, match='volume_conv_lowering'):
    models.make_generator(_config(volume_conv_lowering='cudnn').model, config.image_size)


def test_discriminator_scales_features_and_spectral_norm_state():
  config = _config()
  discriminator = models.make_discriminator(config.model)
  images = jax.random.uniform(jax.random.key(1), (BATCH, 32, 32, 3))
  variables = discriminator.init(_key(0), images, update_stats=False)
  assert 'batch_stats' in variables
  num_scales = config.model.disc_num_scales
  channels = config.model.disc_channels

  outputs = discriminator.apply(variables, images, update_stats=False)
  assert len(outputs) == num_scales
  for scale, (features, logits) in enumerate(outputs):
    size = 32 // 2**scale
    assert len(features) == len(channels)
    for index, (feature, width) in enumerate(zip(features, channels, strict=True)):
      stride = 2 ** min(index + 1, len(channels) - 1)
      assert feature.shape == (BATCH, size // stride, size // stride, width)
    assert logits.shape[:1] == (BATCH,) and logits.shape[-1] == 1
    assert np.all(np.isfinite(np.asarray(logits)))

  # Spectral norm: the power-iteration state moves only with update_stats=True ...
  _, frozen = discriminator.apply(variables, images, update_stats=False, mutable=['batch_stats'])
  scaled = {
    'params': jax.tree_util.tree_map(lambda w: 3.0 * w if w.ndim == 4 else w, variables['params']),
    'batch_stats': variables['batch_stats'],
  }
  scaled_outputs, updated = discriminator.apply(
    scaled, images, update_stats=True, mutable=['batch_stats']
  )
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  for old, new in zip(before, jax.tree_util.tree_leaves(frozen['batch_stats']), strict=True):
    np.testing.assert_array_equal(old, new)
  for path, value in jax.tree_util.tree_leaves_with_path(updated['batch_stats']):
    name = jax.tree_util.keystr(path)
    if name.endswith("sigma']"):
      # The stored estimate follows the kernels (x3); init stores them already normalised.
      assert 2.0 < float(value) < 3.5, name
  changed = [
    not np.allclose(old, new)
    for old, new in zip(before, jax.tree_util.tree_leaves(updated['batch_stats']), strict=True)
  ]
  assert all(changed)
  # ... and the layers see kernel / sigma: scaling every kernel leaves the logits unchanged.
  for (_, logits), (_, logits_scaled) in zip(outputs, scaled_outputs, strict=True):
    np.testing.assert_allclose(logits, logits_scaled, rtol=1e-4, atol=1e-5)


def test_bad_inputs_fail_with_clear_message(setup):
  config, generator, params, inputs, _, _ = setup
  with pytest.raises(ValueError, match='source_landmarks'):
    generator.apply({'params': params}, **{**inputs, 'source_landmarks': inputs['source'][..., 0]})
  with pytest.raises(ValueError, match='renderer_token_patch'):
    models.make_generator(_config(renderer_token_patch=3).model, config.image_size)


def test_unseen_mouth_is_the_opening_the_moved_source_does_not_show():
  from reenact_jax import face_topology

  canonical = 0.8 * face_topology.canonical_landmarks()[None].astype(np.float32)
  opened = canonical.copy()
  # The driver opens the mouth: the inner lower-lip points drop by a tenth of the image.
  lower = [14, 87, 178, 88, 95, 317, 402, 318, 324]
  opened[:, lower, 1] += 0.1
  size = 64
  still = jnp.zeros((1, size, size, 2))
  unseen = np.asarray(models.unseen_mouth(canonical, opened, still))[0, ..., 0]
  inner = face_topology.LIPS_INNER
  from reenact_jax import geometry

  driving_mouth = np.asarray(geometry.polygon_mask(opened[:, inner, :2], size, size))[0]
  source_mouth = np.asarray(geometry.polygon_mask(canonical[:, inner, :2], size, size))[0]
  assert unseen.sum() > 20  # The gap between the lips, in pixels.
  assert np.all(unseen <= driving_mouth + 1e-6)  # Only inside the driver's mouth...
  assert unseen.sum() < driving_mouth.sum() - 0.5 * source_mouth.sum()  # ...less the source's.
  # A mask: the flow gets no gradient for widening it.
  gradient = jax.grad(lambda flow: models.unseen_mouth(canonical, opened, flow).sum())(
    jnp.full((1, size, size, 2), 0.01)
  )
  assert np.all(np.asarray(gradient) == 0.0)
  # A source whose mouth is already as open, moved onto the driver by the flow, shows it all.
  shift = np.float32([0.1, 0.0])
  moved = opened.copy()
  moved[..., :2] += shift
  # Backward flow: the driving pixel q shows the source at q + flow.
  flow = jnp.broadcast_to(jnp.asarray(-shift), (1, size, size, 2))
  shown = np.asarray(models.unseen_mouth(opened, moved, flow))[0, ..., 0]
  assert shown.sum() < 0.15 * unseen.sum(), (shown.sum(), unseen.sum())
  # Swapped roles: the driver closes the mouth, nothing but edge pixels is unseen.
  closed = np.asarray(models.unseen_mouth(opened, canonical, still))[0, ..., 0]
  assert closed.sum() < 0.1 * unseen.sum(), (closed.sum(), unseen.sum())  # Edge pixels only.


def _astronaut(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(crop (size, size, 3) uint8, landmarks (N, 3), matte (size, size)) of the bundled portrait."""
  from reenact_jax import bundled, face

  crop, landmarks, matte, _ = bundled.crop_portrait(
    bundled.portrait_images()['astronaut'], size, face.FaceLandmarker(), face.PersonSegmenter()
  )
  return crop, landmarks, matte


def _prior_render(generator, inputs):
  """models.prior_render compiled (inference.render_fn): run op by op it takes several times
  longer."""
  return inference.render_fn(generator, prior_only=True)(None, inputs)


def _prior_inputs(source, source_landmarks, driving_landmarks, matte) -> dict[str, jax.Array]:
  """Generator inputs of one example (batch 1, float32) from a source (H, W, 3) in [0, 1], its
  and the driver's landmarks (N, 3) and its person matte (H, W, 1); an empty face mask
  (models.prior_render does not read it)."""
  inputs = {
    'source': source[None],
    'source_landmarks': source_landmarks[None],
    'driving_landmarks': driving_landmarks[None],
    'source_mask': np.zeros((1, *source.shape[:2], 1)),
    'source_matte': matte[None],
  }
  return {name: jnp.asarray(value, jnp.float32) for name, value in inputs.items()}


def test_a_closing_eye_closes_in_the_output_with_the_eye_mesh():
  """The driving landmarks close both eyes (upper lids onto lower lids): with the eye meshes the
  prior's output covers the irises with lid skin; the volume's flow alone cannot (its grid is
  coarser than the lid gap)."""
  size = 128
  crop, landmarks, matte = _astronaut(size)
  driving = landmarks.copy()
  driving[face_topology.UPPER_LIDS, :2] = driving[face_topology.LOWER_LIDS, :2] - [0.0, 2e-3]
  inputs = _prior_inputs(crop / 255.0, landmarks, driving, matte[..., None])
  config = config_with()
  dark = {}
  for eye_mesh in (False, True):
    generator = models.make_generator(config.model, size).clone(eye_mesh=eye_mesh)
    output = np.asarray(_prior_render(generator, inputs)['output'][0])
    dark[eye_mesh] = _dark_iris_pixels(output, landmarks, size)
  source_dark = _dark_iris_pixels(crop / 255.0, landmarks, size)
  assert source_dark > 20
  assert dark[False] > 0.6 * source_dark  # The eyes stay open without the meshes.
  assert dark[True] < 0.2 * source_dark


def _dark_iris_pixels(image: np.ndarray, landmarks: np.ndarray, size: int) -> int:
  """Pixels as dark as an iris or pupil (darker than the lid's lashes) inside both eyes' source
  openings."""
  opening = np.zeros((size, size), bool)
  for eye in (face_topology.RIGHT_EYE, face_topology.LEFT_EYE):
    opening |= crops.mask_from_polygon(landmarks[eye, :2], size, size)[..., 0] > 0
  return int(((image.mean(-1) < 0.25) & opening).sum())


def test_the_prior_shows_a_dark_inside_where_the_mouth_opens_wider_than_the_source():
  canonical = 0.8 * face_topology.canonical_landmarks()[None].astype(np.float32)
  opened = canonical.copy()
  opened[:, [14, 87, 178, 88, 95, 317, 402, 318, 324], 1] += 0.1  # inner lower lip drops
  size = 64
  source = jnp.full((1, size, size, 3), 0.9)  # a bright face: lips and teeth alike
  inputs = {
    'source': source,
    'source_landmarks': jnp.asarray(canonical),
    'driving_landmarks': jnp.asarray(opened),
    'source_mask': jnp.zeros((1, size, size, 1)),
    'source_matte': jnp.ones((1, size, size, 1)),
  }
  generator = models.make_generator(config_with().model, size)
  outputs = _prior_render(generator, inputs)
  unseen = np.asarray(models.unseen_mouth(canonical, opened, outputs['flow_2d']))[0, ..., 0]
  image = np.asarray(outputs['warped_source'])[0]
  gap = unseen > 0.99
  assert gap.sum() > 10
  np.testing.assert_allclose(
    image[gap], np.broadcast_to(models.MOUTH_CAVITY, image[gap].shape), atol=1e-3
  )
  assert image[unseen == 0].min() > 0.85  # Elsewhere the source's own pixels.


def test_an_opening_mouth_keeps_the_teeth_under_the_upper_lip_with_the_mouth_mesh():
  """The driver drops the jaw (and moves the head): without the mouth mesh the smooth flow
  stretches the source's teeth down into the opening (more teeth pixels than the source has);
  with it the teeth keep their size, move with the skull, and the rest of the opening is the
  dark unseen mouth."""
  size = 128
  crop, landmarks, matte = _astronaut(size)
  driving = landmarks.copy()
  below_mouth = landmarks[:, 1] > landmarks[face_topology.LIPS_INNER, 1].mean() + 0.005
  driving[below_mouth, 1] += 0.1  # The jaw drops ...
  driving[:, :2] += [0.06, -0.04]  # ... and the head moves right and up.
  inputs = _prior_inputs(crop / 255.0, landmarks, driving, matte[..., None])
  source_teeth, _ = _teeth_pixels(crop / 255.0, landmarks, size)
  assert source_teeth > 40
  teeth, dark = {}, {}
  for mouth_mesh in (False, True):
    generator = models.make_generator(config_with().model, size).clone(mouth_mesh=mouth_mesh)
    output = np.asarray(_prior_render(generator, inputs)['output'][0])
    teeth[mouth_mesh], dark[mouth_mesh] = _teeth_pixels(output, driving, size)
  assert teeth[False] > 1.05 * source_teeth  # Stretched into the opening.
  assert 0.7 * source_teeth < teeth[True] <= source_teeth
  assert dark[True] > 1.5 * dark[False]


def _teeth_pixels(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[int, int]:
  """(bright, dark) pixel counts inside the mouth's opening (the inner-lip polygon): teeth,
  and the dark of the mouth."""
  opening = crops.mask_from_polygon(landmarks[face_topology.LIPS_INNER, :2], size, size)[..., 0]
  opening = opening > 0
  return int(((image.min(-1) > 0.55) & opening).sum()), int(((image.max(-1) < 0.3) & opening).sum())


def test_the_neck_stretches_with_a_rising_head_and_the_shoulders_stay():
  """The head rises: with neck_follows the neck fills the space under the moved chin, without
  it the space shows the background; the shoulders and the background stay exactly where they
  are either way."""
  size = 64
  landmarks = 0.7 * face_topology.canonical_landmarks()[None].astype(np.float32)
  landmarks += np.float32([0.0, -0.2, 0.0])
  grid = (np.arange(size) + 0.5) / size * 2 - 1
  yy, xx = np.meshgrid(grid, grid, indexing='ij')
  head = np.asarray(geometry.head_region(jnp.asarray(landmarks), size, size))[0]
  chin = landmarks[0, 152, 1]
  person = (head > 0.5) | ((np.abs(xx) < 0.22) & (yy > chin - 0.1)) | (yy > 0.75)
  red, blue = np.float32([0.9, 0.2, 0.2]), np.float32([0.2, 0.3, 0.9])
  image = np.where(person[..., None], red, blue)
  driving = landmarks + np.float32([0.0, -0.12, 0.0])
  inputs = _prior_inputs(image, landmarks[0], driving[0], person[..., None])
  under_chin = (np.abs(xx) < 0.12) & (yy > driving[0, 152, 1] + 0.04) & (yy < chin + 0.04)
  assert under_chin.sum() > 20
  shown = {}
  for neck_follows in (False, True):
    generator = models.make_generator(config_with().model, size).clone(neck_follows=neck_follows)
    output = np.asarray(models.prior_render(generator, inputs)['output'][0])
    shown[neck_follows] = np.mean((output[..., 0] > 0.6) & (output[..., 2] < 0.4), where=under_chin)
    np.testing.assert_array_equal(output[yy > 0.85], image[yy > 0.85])  # The shoulders.
    background = ~person & (np.abs(xx) > 0.8)
    np.testing.assert_allclose(output[background], image[background], atol=1e-6)
  assert shown[False] < 0.5  # A gap under the chin.
  assert shown[True] == 1.0


def test_a_head_moving_sideways_leaves_no_hair_behind_with_the_neck_following():
  """The head moves a head's width sideways: where it was, beside its new place, the output shows
  the filled background (the wall), not the head left behind by the neck's partial motion."""
  size = 64
  landmarks = 0.5 * face_topology.canonical_landmarks()[None].astype(np.float32)
  grid = (np.arange(size) + 0.5) / size * 2 - 1
  yy, xx = np.meshgrid(grid, grid, indexing='ij')
  head = np.asarray(geometry.head_region(jnp.asarray(landmarks), size, size))[0]
  person = (head > 0.5) | ((np.abs(xx) < 0.15) & (yy > 0.2)) | (yy > 0.8)
  red, blue = np.float32([0.9, 0.2, 0.2]), np.float32([0.2, 0.3, 0.9])
  image = np.where(person[..., None], red, blue)
  driving = landmarks + np.float32([0.45, 0.0, 0.0])
  inputs = _prior_inputs(image, landmarks[0], driving[0], person[..., None])
  follows = np.asarray(geometry.neck_region(jnp.asarray(driving), size, size))[0]
  left_behind = (head > 0.9) & (follows == 0.0) & (yy < 0.1)
  assert left_behind.sum() > 30
  generator = models.make_generator(config_with().model, size).clone(neck_follows=True)
  output = np.asarray(models.prior_render(generator, inputs)['output'][0])
  reddish = (output[..., 0] > 0.5) & (output[..., 2] < 0.6)
  assert np.mean(reddish, where=left_behind) < 0.05
  moved_head = np.asarray(geometry.head_region(jnp.asarray(driving), size, size))[0] > 0.9
  assert np.mean(reddish, where=moved_head & ~left_behind) > 0.95  # The head itself moved.
