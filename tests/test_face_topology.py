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
