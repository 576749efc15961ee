"""The face-topology constants and the committed asset derived from a real portrait."""

import numpy as np

from reenact_jax import face_topology as ft


def _polygon_area(points: np.ndarray) -> float:
  x, y = points[:, 0], points[:, 1]
  return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_flip_permutation_is_an_involution_that_swaps_sides():
  perm = ft.FLIP_PERMUTATION
  assert perm.shape == (ft.NUM_LANDMARKS,)
  np.testing.assert_array_equal(perm[perm], np.arange(ft.NUM_LANDMARKS))
  assert set(perm[ft.RIGHT_EYE].tolist()) == set(ft.LEFT_EYE.tolist())
  assert set(perm[ft.RIGHT_EYEBROW].tolist()) == set(ft.LEFT_EYEBROW.tolist())
  np.testing.assert_array_equal(perm[ft.RIGHT_IRIS[:1]], ft.LEFT_IRIS[:1])
  for group in (ft.FACE_OVAL, ft.LIPS_OUTER, ft.LIPS_INNER, ft.NOSE, ft.STABLE):
    assert set(perm[group].tolist()) == set(group.tolist())


def test_canonical_face_is_frontal_symmetric_and_normalised():
  face = ft.canonical_landmarks()
  assert face.shape == (ft.NUM_LANDMARKS, 3) and face.dtype == np.float32
  mirrored = face[ft.FLIP_PERMUTATION] * np.array([-1, 1, 1], np.float32)
  np.testing.assert_allclose(mirrored, face, atol=1e-5)
  oval = face[ft.FACE_OVAL, :2]
  extent = oval.max(0) - oval.min(0)
  assert abs(float(extent.max()) - 1.2) < 1e-3  # 60% of the [-1, 1] frame
  assert abs(float(face[:, 2].mean())) < 1e-5
  # Upright, unmirrored, camera-facing: forehead above chin, the subject's right eye on the
  # image's left, nose tip nearer the camera than the face outline.
  assert face[10, 1] < face[1, 1] < face[152, 1]
  assert face[33, 0] < 0 < face[263, 0]
  assert face[1, 2] < face[ft.FACE_OVAL, 2].mean()
  # Polygons are ordered (simple): their area equals their convex hull's nearly everywhere.
  area = abs(_polygon_area(oval))
  assert 0.8 < area < 1.2 * 1.2
  for eye in (ft.RIGHT_EYE, ft.LEFT_EYE):
    pts = face[eye, :2]
    assert abs(_polygon_area(pts)) > 0.5 * np.prod(pts.max(0) - pts.min(0))


def test_mouth_triangles_cover_the_lips_and_leave_the_opening_open():
  face = ft.canonical_landmarks()[:, :2]
  triangles = ft.mouth_triangles()
  assert triangles.ndim == 2 and triangles.shape[1] == 3 and len(triangles) > 100
  a, b, c = (face[triangles[:, k]] for k in range(3))
  cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
  assert np.all(cross > 0)  # Counter-clockwise, none degenerate.
  # No centroid inside the opening; every lip landmark is a corner of some triangle.
  inside = ft._inside_polygon(face[ft.LIPS_INNER])((a + b + c) / 3)
  assert not inside.any()
  assert set(ft.MOUTH_POINTS.tolist()) <= set(triangles.ravel().tolist())
  # The mesh stays below the eyes.
  assert not set(triangles.ravel().tolist()) & set(np.r_[ft.RIGHT_EYE, ft.LEFT_EYE].tolist())
