"""Tests of reenact_jax.expressions: the landmark edits and the per-region error."""

import numpy as np
import pytest

from reenact_jax import expressions, face_topology, metrics

RIGHT_CORNER, LEFT_CORNER = face_topology.MOUTH_CORNERS
CHIN = 152


def _face() -> np.ndarray:
  """The canonical face (478 landmarks, normalised units, x right, y down), a little rolled."""
  points = 0.8 * face_topology.canonical_landmarks().astype(np.float32)
  angle = 0.15
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  points[:, :2] = points[:, :2] @ rotation.T.astype(np.float32)
  return points


def _moved(before: np.ndarray, after: np.ndarray) -> np.ndarray:
  return np.linalg.norm(after[:, :2] - before[:, :2], axis=-1)


def _lid_gap(points: np.ndarray, eye: int) -> float:
  upper = face_topology.UPPER_LIDS[7 * eye : 7 * eye + 7]
  lower = face_topology.LOWER_LIDS[7 * eye : 7 * eye + 7]
  outer, inner = face_topology.EYE_CORNERS[eye]
  width = np.linalg.norm(points[outer, :2] - points[inner, :2])
  return float(np.linalg.norm(points[upper, :2] - points[lower, :2], axis=-1).mean() / width)


@pytest.mark.parametrize('eye', [0, 1])
def test_a_wink_closes_one_eye_and_moves_nothing_else(eye):
  face = _face()
  winked = expressions.edit(face, ('wink_right', 'wink_left')[eye])
  assert _lid_gap(face, eye) > 0.15
  assert _lid_gap(winked, eye) < 0.03
  assert _lid_gap(winked, 1 - eye) == pytest.approx(_lid_gap(face, 1 - eye))
  moved = _moved(face, winked) > 0
  assert set(np.flatnonzero(moved)) <= set(face_topology.UPPER_LIDS[7 * eye : 7 * eye + 7])
  np.testing.assert_array_equal(winked[:, 2], face[:, 2])


@pytest.mark.parametrize('side', [0, 1])
def test_a_one_sided_smile_raises_and_widens_its_own_corner(side):
  face = _face()
  smiled = expressions.edit(face, ('smile_right', 'smile_left')[side])
  corner, other = face_topology.MOUTH_CORNERS[side], face_topology.MOUTH_CORNERS[1 - side]
  eyes = face[np.concatenate([face_topology.RIGHT_EYE, face_topology.LEFT_EYE])].mean(0)
  up = eyes[:2] - face[face_topology.MOUTH_POINTS].mean(0)[:2]
  up /= np.linalg.norm(up)
  outward = face[corner, :2] - face[other, :2]
  outward /= np.linalg.norm(outward)
  shift = smiled[corner, :2] - face[corner, :2]
  mouth_width = np.linalg.norm(face[corner, :2] - face[other, :2])
  assert shift @ up > 0.15 * mouth_width and shift @ outward > 0.05 * mouth_width
  assert _moved(face, smiled)[other] < 0.15 * _moved(face, smiled)[corner]
  assert _moved(face, smiled)[face_topology.EYE_POINTS].max() < 1e-2 * mouth_width


def test_an_open_mouth_drops_the_lower_lip_and_the_jaw_but_not_the_corners():
  face = _face()
  opened = expressions.edit(face, 'mouth_open')
  canonical = face_topology.canonical_landmarks()
  stable = np.asarray(face_topology.STABLE)
  before = metrics.face_measures(face[None], canonical, stable)['mouth_opening'][0]
  after = metrics.face_measures(opened[None], canonical, stable)['mouth_opening'][0]
  mouth_width = np.linalg.norm(face[RIGHT_CORNER, :2] - face[LEFT_CORNER, :2])
  eye_distance = np.linalg.norm(face[33, :2] - face[263, :2])
  assert after - before > 0.8 * expressions.MOUTH_DROP * mouth_width / eye_distance
  assert _moved(face, opened)[CHIN] == pytest.approx(expressions.MOUTH_DROP * mouth_width, rel=1e-4)
  assert _moved(face, opened)[[RIGHT_CORNER, LEFT_CORNER]].max() < 1e-6
  above = np.concatenate([face_topology.EYE_POINTS, face_topology.UPPER_LIP, [10]])
  assert _moved(face, opened)[np.setdiff1d(above, [61, 291, 78, 308])].max() < 1e-6


def test_an_unknown_edit_is_named():
  with pytest.raises(ValueError, match='wink_right'):
    expressions.edit(_face(), 'frown')


def test_regions_are_where_their_names_say():
  regions = expressions.regions()
  assert (
    RIGHT_CORNER in regions['right_mouth_corner'] and LEFT_CORNER in regions['left_mouth_corner']
  )
  assert not set(regions['right_mouth_corner']) & set(regions['left_mouth_corner'])
  assert CHIN in regions['jaw'] and 10 not in regions['jaw']  # chin, not the forehead
  assert 33 in regions['right_eye'] and 263 in regions['left_eye']


def test_region_errors_see_the_edit_where_it_is_and_ignore_the_head_pose():
  face = _face()
  wanted = expressions.edit(face, 'wink_left')
  assert max(expressions.region_errors(wanted, wanted).values()) < 1e-5
  # A run of 468 landmarks (no irises) against the face mesh's 478: the same mesh points.
  assert expressions.region_errors(face, wanted[:468]) == expressions.region_errors(face, wanted)
  ignored = expressions.region_errors(face, wanted)  # an output that does not wink
  assert ignored['left_eye'] > 0.01
  others = [value for name, value in ignored.items() if name != 'left_eye']
  assert max(others) < 0.05 * ignored['left_eye']
  # The same output turned, scaled and shifted in the frame: the same errors.
  angle = 0.3
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  posed = face.copy()
  posed[:, :2] = 0.7 * face[:, :2] @ rotation.T.astype(np.float32) + [0.1, -0.05]
  posed[:, 2] *= 0.7
  for name, value in expressions.region_errors(posed, wanted).items():
    assert value == pytest.approx(ignored[name], abs=1e-4), name
  # The wrong eye winked: the wanted eye is as wrong as not winking, the other one is wrong too.
  swapped = expressions.region_errors(expressions.edit(face, 'wink_right'), wanted)
  assert swapped['left_eye'] == pytest.approx(ignored['left_eye'], rel=1e-3)
  assert swapped['right_eye'] > 0.5 * ignored['left_eye']


def test_summarise_scores_reproduced_ignored_and_overdone_edits():
  face = _face()
  wanted = expressions.edit(face, 'smile_right')
  size = expressions.region_errors(face, wanted)
  overdone = face.copy()
  overdone[:, :2] = face[:, :2] + 2.5 * (wanted[:, :2] - face[:, :2])
  # Overdone 2.5x: 1.5x the edit's size the other way.
  for found, expected, tolerance in (
    (wanted, 1.0, 1e-3),
    (face, 0.0, 1e-3),
    (overdone, -0.5, 1e-3),
  ):
    values = expressions.summarise(
      {'smile_right': [expressions.region_errors(found, wanted)], 'wink_left': []},
      {'smile_right': [size], 'wink_left': []},
    )
    assert values['expression_smile_right_reproduced'] == pytest.approx(expected, abs=tolerance)
  assert values['expression_error_right_mouth_corner'] == pytest.approx(
    1.5 * size['right_mouth_corner'], rel=1e-3
  )
  assert values['expression_wink_left_reproduced'] is None  # no pair of that edit
  assert 'expression_wink_left_right_eye' not in values
