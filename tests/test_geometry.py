"""Tests of reenact_jax.geometry: similarity fits, the initial 3D facial flow, the head region,
the projection of a 3D flow to the image, head pose."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reenact_jax import crops, face_topology, geometry, warp

NUM_LANDMARKS = 24
STABLE = np.arange(0, NUM_LANDMARKS, 2)
SIZE = dict(depth=4, height=8, width=8)


def _landmarks(seed, batch=2, n=NUM_LANDMARKS, spread=0.4):
  return spread * jax.random.uniform(jax.random.PRNGKey(seed), (batch, n, 3), minval=-1, maxval=1)


def _random_rotation(seed, batch):
  angles = jax.random.uniform(jax.random.PRNGKey(seed), (batch, 3), minval=-40, maxval=40)
  return angles, geometry.euler_to_rotation(angles)


initial_flow = jax.jit(
  geometry.initial_flow, static_argnames=('depth', 'height', 'width', 'sigma', 'stable_indices')
)


def _flow(source, driving, sigma=0.15, source_head=None):
  """(flow, confidence) of the prior; with `source_head`, (flow, confidence, head_flow)."""
  flow, confidence, head_flow = initial_flow(
    source, driving, **SIZE, sigma=sigma, stable_indices=tuple(STABLE), source_head=source_head
  )
  return (flow, confidence) if source_head is None else (flow, confidence, head_flow)


def test_similarity_transform_recovers_known_motion():
  src = _landmarks(0)
  _, rotation = _random_rotation(1, 2)
  scale = jnp.array([0.7, 1.3])
  translation = jnp.array([[0.1, -0.2, 0.05], [-0.3, 0.0, 0.2]])
  dst = geometry.apply_similarity(src, scale, rotation, translation)
  got_scale, got_rotation, got_translation = jax.jit(geometry.similarity_transform)(src, dst)
  np.testing.assert_allclose(got_scale, scale, rtol=1e-4)
  np.testing.assert_allclose(got_rotation, rotation, atol=1e-4)
  np.testing.assert_allclose(got_translation, translation, atol=1e-4)


def test_similarity_transform_weights_ignore_outliers_and_never_reflect():
  src = _landmarks(2, batch=1)
  dst = src.at[:, :4].add(0.5)  # four corrupted points
  weights = jnp.ones(NUM_LANDMARKS).at[:4].set(0.0)
  scale, rotation, translation = geometry.similarity_transform(src, dst, weights)
  np.testing.assert_allclose(scale, [1.0], rtol=1e-4)
  np.testing.assert_allclose(rotation[0], np.eye(3), atol=1e-4)
  np.testing.assert_allclose(translation, np.zeros((1, 3)), atol=1e-4)
  # A mirrored target: the best proper rotation, det +1, not the reflection.
  mirrored = src * jnp.array([-1.0, 1.0, 1.0])
  _, rotation, _ = geometry.similarity_transform(src, mirrored)
  np.testing.assert_allclose(jnp.linalg.det(rotation), [1.0], atol=1e-4)


def test_identical_landmarks_give_zero_flow_and_bounded_confidence():
  landmarks = _landmarks(3)
  flow, confidence = _flow(landmarks, landmarks)
  assert flow.shape == (2, 4, 8, 8, 3) and confidence.shape == (2, 4, 8, 8, 1)
  np.testing.assert_allclose(flow, 0.0, atol=1e-4)
  assert float(confidence.min()) >= 0.0 and float(confidence.max()) <= 1.0


def test_confidence_is_one_at_the_face_and_fades_away():
  # Landmarks clustered around the first voxel centre, in one corner of the volume.
  landmarks = 0.1 * _landmarks(4) + jnp.array([-0.875, -0.875, -0.75])
  _, confidence = _flow(landmarks, landmarks, sigma=0.1)
  assert float(confidence[:, 0, 0, 0, 0].min()) > 0.99  # voxel centre (-.875, -.875, -.75)
  assert float(confidence[:, -1, -1, -1, 0].max()) < 1e-6  # opposite corner


def test_rigid_motion_flow_maps_driving_landmarks_to_source():
  driving = _landmarks(5)
  _, rotation = _random_rotation(6, 2)
  scale = jnp.array([0.9, 1.1])
  translation = jnp.array([[0.05, -0.1, 0.0], [0.1, 0.05, -0.05]])
  source = geometry.apply_similarity(driving, scale, rotation, translation)
  flow, _ = _flow(source, driving)
  # The flow of a pure similarity is affine in p, so trilinear sampling of it is exact.
  at_landmarks = warp.sample_3d(flow, driving)
  np.testing.assert_allclose(at_landmarks, source - driving, atol=1e-4)
  # And everywhere: flow(p) = s R p + t - p.
  grid = warp.identity_grid_3d(**SIZE)
  expected = geometry.apply_similarity(
    jnp.broadcast_to(grid, flow.shape), scale, rotation, translation
  )
  np.testing.assert_allclose(flow, expected - grid, atol=1e-4)


def test_non_rigid_residual_is_carried_near_its_landmark():
  # One landmark far from the others moves by a small offset; the rigid fit (on the other,
  # still landmarks) is the identity, so the flow at a voxel centre on that landmark equals
  # the normalised Gaussian average of residuals there: its own offset.
  grid = warp.identity_grid_3d(**SIZE)
  anchor = grid[1, 2, 5]
  driving = _landmarks(7, batch=1) * 0.3 + jnp.array([-0.6, 0.4, 0.0])
  driving = driving.at[0, 1].set(anchor)  # odd index: not in STABLE
  offset = jnp.array([0.03, -0.02, 0.01])
  source = driving.at[0, 1].add(offset)
  flow, confidence = _flow(source, driving, sigma=0.1)
  np.testing.assert_allclose(flow[0, 1, 2, 5], offset, atol=1e-3)
  assert float(confidence[0, 1, 2, 5, 0]) == pytest.approx(1.0)


def test_initial_flow_matches_direct_formula():
  source, driving = _landmarks(8), _landmarks(9)
  sigma = 0.2
  flow, confidence = _flow(source, driving, sigma=sigma)
  scale, rotation, translation = geometry.similarity_transform(
    driving[:, STABLE], source[:, STABLE]
  )
  grid = warp.identity_grid_3d(**SIZE).reshape(-1, 3)
  residual = source - geometry.apply_similarity(driving, scale, rotation, translation)
  distance2 = jnp.sum((grid[None, :, None] - driving[:, None]) ** 2, -1)  # (B, P, N)
  weights = jnp.exp(-distance2 / (2 * sigma**2))
  total = weights.sum(-1, keepdims=True)
  expected_conf = jnp.minimum(total, 1.0)
  expected = (
    geometry.apply_similarity(
      jnp.broadcast_to(grid, (2, *grid.shape)), scale, rotation, translation
    )
    + expected_conf * jnp.einsum('bpn,bnc->bpc', weights, residual) / total
    - grid
  )
  np.testing.assert_allclose(flow.reshape(2, -1, 3), expected, atol=1e-4)
  np.testing.assert_allclose(confidence.reshape(2, -1, 1), expected_conf, atol=1e-5)


def test_only_the_head_moves_and_the_rest_stays():
  # A pure translation of the face; the source head weight covers the left half of the volume.
  driving = _landmarks(12)
  shift = jnp.array([0.25, 0.0, 0.0])
  source = driving + shift
  head = jnp.zeros((2, 8, 8)).at[:, :, :4].set(1.0)  # x < 0 in the source is head.
  flow, _, head_flow = _flow(source, driving, source_head=head)
  grid = warp.identity_grid_3d(**SIZE)
  # head_flow: everything moves with the head (backward flow = +shift everywhere).
  np.testing.assert_allclose(head_flow, jnp.broadcast_to(shift, head_flow.shape), atol=1e-4)
  # flow: a driving voxel moves iff its pre-image p + shift is on the source head (x < 0).
  on_head = (grid[..., 0] + shift[0]) < -0.1
  off_head = (grid[..., 0] + shift[0]) > 0.1
  np.testing.assert_allclose(
    flow[:, on_head], jnp.broadcast_to(shift, (2, int(on_head.sum()), 3)), atol=1e-4
  )
  np.testing.assert_allclose(flow[:, off_head], 0.0, atol=1e-4)


def test_head_region_covers_face_and_hair_not_the_shoulders():
  canonical = jnp.asarray(face_topology.canonical_landmarks())[None]
  region = geometry.head_region(canonical, 64, 64)[0]
  oval = np.asarray(canonical[0, face_topology.FACE_OVAL, :2])
  to_pixel = lambda xy: tuple(np.round((np.asarray(xy) + 1) * 32 - 0.5).astype(int)[::-1])
  centre = oval.mean(axis=0)
  top = oval[np.argmin(oval[:, 1])]
  chin = oval[np.argmax(oval[:, 1])]
  assert float(region[to_pixel(centre)]) == 1.0  # The face.
  assert float(region[to_pixel(top - [0.0, 0.1])]) == 1.0  # Hair above the forehead.
  half_width = (oval[:, 0].max() - oval[:, 0].min()) / 2
  # Voluminous hair: a quarter of a face height above the forehead, and beside the temples.
  assert float(region[to_pixel(top - [0.0, 0.3])]) == 1.0
  assert float(region[to_pixel([centre[0] + 1.6 * half_width, top[1] + 0.15])]) == 1.0
  assert float(region[to_pixel([centre[0], chin[1] + 0.4])]) == 0.0  # The neck's base.
  assert float(region[to_pixel([centre[0] + 0.9, chin[1] + 0.3])]) == 0.0  # A shoulder.
  # It moves, turns and scales with the face: shifted landmarks shift the region.
  moved = geometry.head_region(canonical + jnp.array([0.25, 0.0, 0.0]), 64, 64)[0]
  np.testing.assert_allclose(moved[:, 8:], region[:, :-8], atol=1e-5)


def test_neck_region_follows_the_head_under_the_chin_and_stops_at_the_shoulders():
  # A half-size head in the upper middle, so the neck and shoulders are inside the frame.
  canonical = 0.5 * jnp.asarray(face_topology.canonical_landmarks())[None]
  neck = geometry.neck_region(canonical, 64, 64)[0]
  head = geometry.head_region(canonical, 64, 64)[0]
  oval = np.asarray(canonical[0, face_topology.FACE_OVAL, :2])
  to_pixel = lambda xy: tuple(np.round((np.asarray(xy) + 1) * 32 - 0.5).astype(int)[::-1])
  centre, chin = oval.mean(axis=0), oval[np.argmax(oval[:, 1])]
  assert float(neck[to_pixel(centre)]) == 1.0
  under_chin = to_pixel([centre[0], chin[1] + 0.05])
  assert float(neck[under_chin]) == 1.0 > float(head[under_chin])  # Further than the head ...
  neck_middle = to_pixel([centre[0], chin[1] + 0.15])
  assert 0.0 < float(neck[neck_middle]) < 1.0 and float(head[neck_middle]) == 0.0  # ... fading ...
  assert float(neck[to_pixel([centre[0], chin[1] + 0.3])]) == 0.0  # ... gone at the shoulders,
  assert float(neck[to_pixel([centre[0] + 0.3, chin[1] + 0.15])]) == 0.0  # and beside the neck.
  column = np.asarray(neck[:, 32])
  assert np.all(np.diff(column[32:]) <= 1e-6)  # Falling down the neck.
  # All of the head region, its soft edge included, follows the head fully.
  assert np.all(np.asarray(neck)[np.asarray(head) > 0] == 1.0)


def test_rigid_flow_2d_brings_each_driving_pixel_from_its_source_point():
  source = _landmarks(3)
  # The driving head is the source scaled by 1.2 about the origin and shifted, in the image's
  # plane: each driving pixel q shows the source at (q - shift) / 1.2.
  shift = jnp.array([0.1, -0.05, 0.0])
  driving = 1.2 * source + shift
  flow = geometry.rigid_flow_2d(source, driving, STABLE, jnp.zeros(2), 16, 16)
  grid = warp.identity_grid_2d(16, 16)
  expected = (grid - shift[:2]) / 1.2 - grid
  np.testing.assert_allclose(flow, jnp.broadcast_to(expected, flow.shape), atol=1e-4)
  # A turn about the vertical axis: the pixel's depth decides where it comes from.
  _, rotation = _random_rotation(4, 2)
  turned = jnp.einsum('bij,bnj->bni', rotation, source)
  near, far = (
    geometry.rigid_flow_2d(source, turned, STABLE, jnp.full(2, z), 16, 16) for z in (-0.3, 0.3)
  )
  assert float(jnp.abs(near - far).max()) > 0.05


def test_project_flow_weights_depth_slices_by_visibility():
  flow = jnp.zeros((1, 4, 4, 4, 3)).at[:, 2].set(jnp.array([0.1, -0.2, 0.3]))
  visibility = jnp.zeros((1, 4, 4, 4, 1)).at[:, 2].set(30.0)  # Slice 2 is the visible one.
  planar = geometry.project_flow(flow, visibility, 8, 8)
  assert planar.shape == (1, 8, 8, 2)
  np.testing.assert_allclose(
    planar, jnp.broadcast_to(jnp.array([0.1, -0.2]), planar.shape), atol=1e-5
  )
  uniform = geometry.project_flow(flow, jnp.zeros_like(visibility), 4, 4)
  np.testing.assert_allclose(
    uniform, jnp.broadcast_to(jnp.array([0.025, -0.05]), uniform.shape), atol=1e-6
  )


def test_head_pose_and_euler_angles_round_trip():
  canonical = _landmarks(10, batch=1)[0]
  angles, rotation = _random_rotation(11, 3)
  observed = geometry.apply_similarity(
    jnp.broadcast_to(canonical, (3, *canonical.shape)), jnp.ones(3), rotation, jnp.zeros((3, 3))
  )
  _, got_rotation, _ = geometry.head_pose(observed, canonical, STABLE)
  np.testing.assert_allclose(geometry.rotation_to_euler(got_rotation), angles, atol=1e-2)
  # Sign convention: a pure yaw is a turn about the vertical (y) axis.
  yaw_only = geometry.euler_to_rotation(jnp.array([[30.0, 0.0, 0.0]]))
  np.testing.assert_allclose(yaw_only[0] @ jnp.array([0.0, 1.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-6)


def test_polygon_mask_fills_the_inside_of_a_concave_polygon():
  # An L shape (concave), in either orientation: the inside is 1, the notch and outside 0.
  shape = jnp.array([[-0.5, -0.5], [0.0, -0.5], [0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [-0.5, 0.5]])
  for polygon in (shape, shape[::-1]):
    mask = np.asarray(geometry.polygon_mask(polygon[None], 16, 16)[0])
    assert mask.shape == (16, 16)
    assert mask[6, 6] == 1.0 and mask[10, 10] == 1.0  # Both arms of the L.
    assert mask[6, 10] == 0.0  # The notch.
    assert mask[1, 1] == 0.0 and mask[14, 14] == 0.0
    # Exact area (the vertices lie on pixel edges): 3/4 of a 8×8 square.
    assert mask.sum() == pytest.approx(48.0)


def test_polygon_mask_agrees_with_the_host_rasteriser():

  landmarks = 0.8 * face_topology.canonical_landmarks()
  polygon = landmarks[face_topology.FACE_OVAL, :2]
  mask = np.asarray(geometry.polygon_mask(jnp.asarray(polygon)[None], 64, 64)[0])
  host = crops.mask_from_polygon(polygon, 64, 64)[..., 0]
  # cv2 also fills the outline's pixels: everything fully inside is in the host mask, and the
  # two differ only on a band about one pixel wide along the outline.
  assert np.all(host[mask == 1.0] == 1.0)
  assert np.abs((mask > 0.5) - host).sum() < 0.1 * host.sum()
  assert np.abs(mask.sum() - host.sum()) < 0.1 * host.sum()


def _triangulated_square():
  """Nine landmarks on a 3x3 grid over [-0.6, 0.6]^2 and its 8 counter-clockwise triangles."""
  xs = np.linspace(-0.6, 0.6, 3)
  points = np.array([[x, y] for y in xs for x in xs], np.float32)
  triangles = []
  for row in range(2):
    for col in range(2):
      a, b, c, d = 3 * row + col, 3 * row + col + 1, 3 * row + col + 3, 3 * row + col + 4
      triangles += [[a, b, c], [b, d, c]]  # counter-clockwise with y pointing down
  return points, np.array(triangles, np.int32)


def test_mesh_flow_reproduces_an_affine_motion_and_covers_the_mesh_only():
  points, triangles = _triangulated_square()
  affine = np.array([[1.1, 0.2], [-0.1, 0.9]], np.float32)
  shift = np.array([0.05, -0.1], np.float32)
  source = points @ affine.T + shift  # the driving mesh is the grid; the source moved
  flow, coverage = geometry.mesh_flow(
    jnp.asarray(source[None]), jnp.asarray(points[None]), triangles, height=32, width=32
  )
  grid = np.asarray(warp.identity_grid_2d(32, 32))
  inside = (np.abs(grid) < 0.6 - 1e-3).all(-1)
  assert np.asarray(coverage)[0, ..., 0][inside].all()
  assert not np.asarray(coverage)[0, ..., 0][(np.abs(grid) > 0.6 + 0.07).any(-1)].any()
  expected = grid @ affine.T + shift - grid
  np.testing.assert_allclose(np.asarray(flow)[0][inside], expected[inside], atol=1e-5)
  assert np.asarray(flow)[0][~np.asarray(coverage)[0, ..., 0].astype(bool)].max() == 0.0


def test_mesh_flow_a_collapsed_row_is_covered_by_its_neighbours():
  # The middle row of the driving grid moves onto the bottom row (an upper lid closing onto the
  # lower lid): the lower triangles collapse, and the upper ones stretch over the whole square,
  # showing only the source's upper half.
  points, triangles = _triangulated_square()
  driving = points.copy()
  driving[3:6, 1] = driving[6:9, 1] - 1e-4
  flow, coverage = geometry.mesh_flow(
    jnp.asarray(points[None]), jnp.asarray(driving[None]), triangles, height=32, width=32
  )
  grid = np.asarray(warp.identity_grid_2d(32, 32))
  inside = (np.abs(grid) < 0.59).all(-1)
  assert np.asarray(coverage)[0, ..., 0][inside].all()
  shown_y = (grid + np.asarray(flow)[0])[..., 1][inside]
  assert shown_y.max() <= 1e-3  # Nothing of the source's lower half (y > 0) is shown.
  # A smooth interpolation of the same landmark motions would show it (the Gaussian prior).
