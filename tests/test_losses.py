"""Every loss term: its value on inputs where the answer is known, and a check that a flipped
sign or swapped inputs would be caught."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reenact_jax import face_topology, geometry, losses


def _images(seed, shape=(2, 16, 16, 3)):
  return jax.random.uniform(jax.random.key(seed), shape)


def test_l1_and_weighted_l1():
  a, b = _images(0), _images(1)
  assert float(losses.l1(prediction=a, target=a)) == 0.0
  assert float(losses.l1(prediction=a, target=b)) == pytest.approx(float(jnp.abs(a - b).mean()))
  # The weight selects pixels and the value is a per-pixel mean over the weighted area.
  weight = jnp.zeros((2, 16, 16, 1)).at[:, :8].set(1.0)
  wrong_outside = a.at[:, 8:].add(0.5)
  assert float(losses.weighted_l1(prediction=wrong_outside, target=a, weight=weight)) == 0.0
  wrong_inside = a.at[:, :8].add(0.25)
  value = losses.weighted_l1(prediction=wrong_inside, target=a, weight=weight)
  assert float(value) == pytest.approx(0.25, rel=1e-5)


def test_cyclic_warp_compares_forward_with_driving_and_cycle_with_source():
  source, driving = _images(2, (2, 32, 32, 3)), _images(3, (2, 32, 32, 3))
  weight = jnp.ones((2, 32, 32, 1))
  small = lambda image: losses.resize_to(image, 8, 8)
  kwargs = dict(source=source, driving=driving, source_weight=weight, driving_weight=weight)
  forward, backward = losses.cyclic_warp(
    projected=small(driving), projected_cycle=small(source), **kwargs
  )
  assert float(forward) == pytest.approx(0.0, abs=1e-6)
  assert float(backward) == pytest.approx(0.0, abs=1e-6)
  # Swapped roles: a forward warp that shows the source (no motion) is penalised.
  forward, backward = losses.cyclic_warp(
    projected=small(source), projected_cycle=small(driving), **kwargs
  )
  expected = float(jnp.abs(small(source) - small(driving)).mean())
  assert float(forward) == pytest.approx(expected, rel=1e-4) and expected > 0.05
  assert float(backward) == pytest.approx(expected, rel=1e-4)


def test_person_weight_counts_background_person_and_face():
  matte = jnp.zeros((1, 4, 4, 1)).at[:, 1:].set(1.0)
  mask = jnp.zeros((1, 4, 4, 1)).at[:, 2:].set(1.0)
  weight = losses.person_weight(matte=matte, mask=mask, face_weight=3.0)
  np.testing.assert_allclose(weight[0, :, 0, 0], [1.0, 2.0, 5.0, 5.0])


def test_alpha_matte():
  matte = (_images(4, (2, 8, 8, 1)) > 0.5).astype(jnp.float32)
  assert float(losses.alpha_matte(alpha=matte, matte=matte)) == 0.0
  assert float(losses.alpha_matte(alpha=1.0 - matte, matte=matte)) == 1.0


def test_inpaint_counts_only_the_background_the_driving_frame_uncovers():
  driving = _images(5)
  hole = jnp.zeros((2, 16, 16, 1)).at[:, 4:12, 4:12].set(1.0)  # Where the source person was.
  driving_matte = jnp.zeros((2, 16, 16, 1)).at[:, 4:12, 8:14].set(1.0)  # Where it is now.
  uncovered = hole * (1.0 - driving_matte)  # Columns 4..7 of rows 4..11.
  # Exact inside the uncovered part: zero, however wrong the rest is.
  background = jnp.where(uncovered > 0, driving, 1.0 - driving)
  kwargs = dict(driving=driving, hole=hole, driving_matte=driving_matte)
  assert float(losses.inpaint(background=background, **kwargs)) == 0.0
  # Wrong inside it: the mean error there.
  background = jnp.where(uncovered > 0, driving + 0.1, driving)
  assert float(losses.inpaint(background=background, **kwargs)) == pytest.approx(0.1, rel=1e-4)
  # No uncovered region (the person did not move): nothing to learn, zero.
  assert (
    float(losses.inpaint(background=1.0 - driving, driving=driving, hole=hole, driving_matte=hole))
    == 0.0
  )


def test_hinge_losses_have_the_right_signs():
  confident_real = [jnp.full((2, 4, 4, 1), 2.0)]
  confident_fake = [jnp.full((2, 4, 4, 1), -2.0)]
  assert (
    float(losses.hinge_discriminator(real_logits=confident_real, fake_logits=confident_fake)) == 0.0
  )
  # Swapped (the discriminator believes the fakes): 3 + 3 per scale.
  swapped = losses.hinge_discriminator(real_logits=confident_fake, fake_logits=confident_real)
  assert float(swapped) == pytest.approx(6.0)
  # The generator gains by raising the discriminator's logits on its images.
  grad = jax.grad(lambda f: losses.hinge_generator(fake_logits=[f]))(confident_fake[0])
  assert float(grad.sum()) < 0
  assert float(losses.hinge_generator(fake_logits=confident_fake)) == pytest.approx(2.0)


def test_feature_matching_pulls_fake_features_only():
  real = [[_images(6, (2, 4, 4, 8)), _images(7, (2, 2, 2, 16))]]
  assert float(losses.feature_matching(real_features=real, fake_features=real)) == 0.0
  fake = [[x + 0.5 for x in real[0]]]
  assert float(losses.feature_matching(real_features=real, fake_features=fake)) == pytest.approx(
    0.5
  )
  grad_real, grad_fake = jax.grad(
    lambda r, f: losses.feature_matching(real_features=r, fake_features=f), argnums=(0, 1)
  )(real, fake)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad_real))
  assert all(float(g.mean()) > 0 for g in jax.tree.leaves(grad_fake))


def test_flow_error_is_the_end_point_error_in_pixels_where_the_motion_is_known():
  target = 0.1 * jax.random.normal(jax.random.key(4), (2, 16, 16, 2))
  known = jnp.zeros((2, 16, 16, 1)).at[0].set(1.0)  # Only the first pair's motion is known.
  exact = losses.flow_error(flow=target, target=target, weight=known)
  assert float(exact) == pytest.approx(0.1, abs=1e-6)  # sqrt(0 + 0.01): the Charbonnier floor.
  # One pixel (2 / 16 normalised units) off in x everywhere: an end-point error of ~1 pixel.
  shifted = target.at[..., 0].add(2.0 / 16)
  value = float(losses.flow_error(flow=shifted, target=target, weight=known))
  assert value == pytest.approx(np.sqrt(1.0 + 0.01), rel=1e-5)
  # Errors where the motion is not known cost nothing.
  wrong_unknown = target.at[1].add(1.0)
  assert float(losses.flow_error(flow=wrong_unknown, target=target, weight=known)) == float(exact)
  # The gradient points away from the truth: a step against it moves the flow towards it (a
  # flipped sign would move it away).
  gradient = jax.grad(lambda f: losses.flow_error(flow=f, target=target, weight=known))(shifted)
  stepped = shifted - 0.05 * gradient
  assert float(losses.flow_error(flow=stepped, target=target, weight=known)) < value
  # The flow's direction counts: the opposite flow is wrong.
  opposite = float(losses.flow_error(flow=-target, target=target, weight=known))
  assert opposite > 10 * float(exact)


def test_the_unseen_mouth_of_made_pairs_does_not_supervise_the_output():
  rng = np.random.default_rng(0)
  driving, output = (jnp.asarray(rng.uniform(size=(2, 8, 8, 3)), jnp.float32) for _ in range(2))
  mouth = jnp.zeros((2, 8, 8, 1)).at[:, 3:6, 2:6].set(1.0)
  made = jnp.array([1.0, 0.0])  # A pseudo-pair and a real pair.
  unsupervised = losses.unsupervised_mouth(unseen_mouth=mouth, made_pair=made)
  inside = np.broadcast_to(np.asarray(mouth) == 1.0, output.shape)
  np.testing.assert_array_equal(unsupervised[1], 0.0)
  np.testing.assert_array_equal(unsupervised[0], mouth[0])

  def l1(output):
    return losses.l1(prediction=output, target=driving, weight=1.0 - unsupervised)

  grad = np.asarray(jax.grad(l1)(output)) * output.size
  assert np.all(grad[0][inside[0]] == 0.0)  # The pseudo-pair's stretched mouth: no gradient.
  np.testing.assert_allclose(np.abs(grad[0][~inside[0]]), 1.0, rtol=1e-6)  # The rest does.
  np.testing.assert_allclose(np.abs(grad[1]), 1.0, rtol=1e-6)  # A real pair's mouth supervises.

  def through_target(output):  # A loss on the target, as the perceptual one: squared error.
    target = losses.reconstruction_target(driving=driving, output=output, unsupervised=unsupervised)
    return jnp.sum(jnp.square(output - target))

  target = losses.reconstruction_target(driving=driving, output=output, unsupervised=unsupervised)
  np.testing.assert_array_equal(target[1], driving[1])
  np.testing.assert_array_equal(np.asarray(target[0])[inside[0]], np.asarray(output[0])[inside[0]])
  grad = np.asarray(jax.grad(through_target)(output))
  assert np.all(grad[0][inside[0]] == 0.0) and np.all(grad[1][inside[1]] != 0.0)


def test_the_eye_zone_covers_the_eyes_and_grows_with_them():
  canonical = face_topology.canonical_landmarks()
  landmarks = jnp.asarray(canonical[None])
  zone = np.asarray(geometry.eye_zone(landmarks, 0.5, 64, 64))[0, ..., 0]
  pixel = lambda point: tuple(
    np.clip(((np.asarray(point[:2]) + 1) * 32 - 0.5).round(), 0, 63).astype(int)
  )
  for eye in (face_topology.RIGHT_EYE, face_topology.LEFT_EYE):
    x, y = pixel(canonical[eye].mean(axis=0))
    assert zone[y, x] == 1.0
  for far in (13, 152, 10):  # The lips, the chin, the top of the forehead.
    x, y = pixel(canonical[far])
    assert zone[y, x] < 0.05, far
  # A face twice as large has eyes twice as large: the zone grows with it.
  larger = np.asarray(geometry.eye_zone(landmarks * 2.0, 0.5, 64, 64))
  assert larger.sum() > 3 * zone.sum()
  # Without the irises (468 landmarks) it is still the eyes.
  mesh_only = geometry.eye_zone(landmarks[:, :468], 0.5, 64, 64)
  assert np.abs(np.asarray(mesh_only)[0, ..., 0] - zone).max() < 0.5


def test_the_renderer_need_not_keep_a_source_occluder_the_driving_frame_does_not_show():
  validity = jnp.ones((1, 6, 6, 1)).at[:, :, 0].set(0.0)
  face = jnp.zeros((1, 6, 6, 1)).at[:, 1:5, 1:5].set(1.0)
  occluder = jnp.zeros((1, 6, 6, 1)).at[:, 2:4, 2:4].set(1.0)
  weight = np.asarray(
    losses.keep_source_weight(validity=validity, driving_mask=face, moved_occluder=occluder)
  )[0, ..., 0]
  assert weight[1, 1] == 1.0 and weight[2, 2] == 0.0 and weight[0, 0] == 0.0
  assert weight.sum() == 16 - 4  # The face, without the occluder (all of the face is valid).
  none = losses.keep_source_weight(
    validity=validity, driving_mask=face, moved_occluder=jnp.zeros_like(occluder)
  )
  np.testing.assert_array_equal(none, validity * face)
