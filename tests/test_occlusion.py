"""Occluded driving faces: the covered region is found on real frames, its landmarks filled in
with the head's pose and the expression of the frames around it; synthetic occluders."""

import numpy as np
import pytest

from reenact_jax import bundled, face, face_topology, media, occlusion

RUN = range(12, 24)  # The frames an occluder covers in the real-frame tests.


@pytest.fixture(scope='module')
def clip():
  """The first 36 carphone frames and their landmarks (frame pixels)."""
  frames = list(media.read_frames(bundled.carphone_path(), max_frames=36))
  landmarker = face.FaceLandmarker()
  return frames, [landmarker(frame) for frame in frames]


def _visibility(frames, landmarks):
  faces = [
    occlusion.aligned_face(frame, points) for frame, points in zip(frames, landmarks, strict=True)
  ]
  return occlusion.region_visibility(np.stack(faces))


def _with_occluder(frames, landmarks, part: str):
  """An object (a patch of scikit-image's coffee photo) over `part` on the frames of RUN."""
  index = [name for name, _ in occlusion.OCCLUDER_PARTS].index(part)
  spec = dict(
    part=index, kind='object', size=0.35, angle=1.0, aspect=0.8, texture='coffee',
    offset=[0.3, 0.3], shade=[1.0, 1.0, 1.0],
  )  # fmt: skip
  out, coverage = list(frames), np.zeros((len(frames), *frames[0].shape[:2]), np.float32)
  rng = np.random.default_rng(0)
  for t in RUN:
    out[t], coverage[t], _ = occlusion.paste_occluder(frames[t], landmarks[t], rng, spec)
  return out, coverage


def test_an_occluders_run_grows_into_its_neighbours_but_not_across_the_shots_ends():
  """Hysteresis: a run goes on through the frames next to it that are far enough, as far as they
  run; the first and last frames of a shot are not neighbours."""
  occluded = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1], bool)
  going_on = np.array([1, 1, 0, 0, 1, 1, 1, 1, 1, 1], bool)
  np.testing.assert_array_equal(
    occlusion._grown(occluded, going_on), [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
  )  # Frames 0-1 are far enough but next to the other end only.
  np.testing.assert_array_equal(occlusion._grown(occluded[::-1], going_on[::-1]), [1] * 6 + [0] * 4)


def test_a_clean_clip_has_no_occluded_region(clip):
  frames, landmarks = clip
  assert _visibility(frames, landmarks).all()


@pytest.mark.parametrize('part', ['mouth', 'jaw'])
def test_an_object_over_the_face_is_found_where_it_is_and_only_then(clip, part):
  frames, clean = clip
  occluded, coverage = _with_occluder(frames, clean, part)
  landmarker = face.FaceLandmarker()
  found = [landmarker(frame) for frame in occluded]  # The face mesh fits a face through it.
  visible = _visibility(occluded, found)
  covered = np.stack([occlusion.covered_regions(clean[t], coverage[t]) for t in range(len(frames))])
  region = occlusion.REGION_NAMES.index(part)
  assert covered[list(RUN), region].all() and not covered[:12].any()
  hidden = ~visible
  assert hidden[list(RUN), region].mean() >= 0.75
  assert not hidden[:12].any() and not hidden[24:].any()
  # What it hides is under the occluder.
  assert not (hidden & ~covered).any()


def _face_clip(frames: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """(frames, 478, 3) pixel landmarks of the canonical face turning, growing and moving, its
  mouth opening linearly; and the same without the head's motion (the expression alone)."""
  canonical = face_topology.canonical_landmarks().astype(np.float64) * 100.0
  lower = np.concatenate([face_topology.LOWER_LIP, [152, 148, 377]])
  expression = np.repeat(canonical[None], frames, axis=0)
  expression[:, lower, 1] += np.linspace(0.0, 12.0, frames)[:, None]
  t = np.linspace(0.0, 1.0, frames)
  angle, scale = 0.4 * np.sin(3 * t), 1.0 + 0.3 * t
  rotation = np.stack(
    [np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)],
    axis=-2,
  )  # (F, 2, 2)
  posed = expression.copy()
  posed[..., :2] = scale[:, None, None] * np.einsum('fij,fnj->fni', rotation, expression[..., :2])
  posed[..., :2] += np.stack([200 + 40 * t, 150 - 30 * t], -1)[:, None]
  posed[..., 2] *= scale[:, None]
  return posed, expression


def test_fill_gives_a_covered_mouth_the_expression_around_it_in_the_frames_pose():
  truth, _ = _face_clip()
  mouth = np.flatnonzero(occlusion.landmark_regions() == occlusion.REGION_NAMES.index('mouth'))
  hidden = np.arange(7, 12)
  corrupted = truth.copy()
  corrupted[np.ix_(hidden, mouth)] = corrupted[0, mouth]  # Stuck where the run began, as found.
  visible = np.ones((len(truth), len(occlusion.REGIONS)), bool)
  visible[hidden, occlusion.REGION_NAMES.index('mouth')] = False
  filled = occlusion.fill_occluded(corrupted, visible)
  before = np.abs(corrupted - truth)[np.ix_(hidden, mouth)].max()
  error = np.abs(filled - truth)[np.ix_(hidden, mouth)].max()
  # Linear opening and an exact similarity per frame: the interpolation in the head's frame is
  # exact (in pixels of a ~100 px face), whatever the pose did meanwhile.
  assert before > 20 and error < 0.05, (before, error)
  # Only the covered region of the covered frames changes.
  changed = np.abs(filled - corrupted.astype(np.float32)).max(axis=-1) > 0
  expected = np.zeros_like(changed)
  expected[np.ix_(hidden, mouth)] = True
  assert (changed == expected).all()


def test_fill_places_the_shape_by_the_pose_of_the_regions_it_sees():
  """The pose is fitted on the stable landmarks of the regions seen: covered regions whose found
  points jumped together (most of the stable landmarks: forehead, nose, a cheek) do not move the
  filled mouth."""
  truth, _ = _face_clip()
  regions = occlusion.landmark_regions()
  names = occlusion.REGION_NAMES
  jumped = ('mouth', 'forehead', 'nose', 'right_cheek')
  corrupted = truth.copy()
  frame = 9
  for name in jumped:
    members = np.flatnonzero(regions == names.index(name))
    corrupted[frame, members, :2] += 15.0  # The face mesh's guess through the occluder.
  visible = np.ones((len(truth), len(names)), bool)
  visible[frame, [names.index(name) for name in jumped]] = False
  filled = occlusion.fill_occluded(corrupted, visible)
  mouth = np.flatnonzero(regions == names.index('mouth'))
  assert np.abs(filled[frame, mouth] - truth[frame, mouth]).max() < 0.05
  # Fitted on every stable landmark (the jumped ones, the majority, included), it lands off.
  only_mouth = np.ones_like(visible)
  only_mouth[frame, names.index('mouth')] = False
  shifted = occlusion.fill_occluded(corrupted, only_mouth)
  assert np.abs(shifted[frame, mouth] - truth[frame, mouth]).max() > 5.0


def test_fill_without_occlusion_changes_nothing():
  truth, _ = _face_clip()
  visible = np.ones((len(truth), len(occlusion.REGIONS)), bool)
  np.testing.assert_array_equal(occlusion.fill_occluded(truth, visible), truth.astype(np.float32))


def test_every_landmark_has_a_region_and_the_regions_sit_where_named():
  regions = occlusion.landmark_regions()
  assert regions.shape == (face_topology.NUM_LANDMARKS,)
  names = occlusion.REGION_NAMES
  assert set(regions) == set(range(len(names)))
  assert (regions[face_topology.RIGHT_IRIS] == names.index('right_eye')).all()
  assert (regions[face_topology.LEFT_IRIS] == names.index('left_eye')).all()
  assert regions[152] == names.index('jaw') and regions[13] == names.index('mouth')
  assert regions[10] == names.index('forehead') and regions[1] == names.index('nose')


def test_occluded_runs_cover_the_fraction_in_runs():
  runs = occlusion.occluded_runs(120, 0.5, np.random.default_rng(3))
  covered = runs >= 0
  assert 0.5 <= covered.mean() <= 0.5 + 16 / 120
  for run in set(runs[covered]):
    frames = np.flatnonzero(runs == run)
    assert 5 <= len(frames) <= 15 and (np.diff(frames) == 1).all()


def test_a_pasted_occluder_covers_its_part_and_moves_with_the_face(clip):
  frames, landmarks = clip
  rng = np.random.default_rng(1)
  for kind in ('hand', 'object'):
    spec = None
    for t in (0, 10):
      index = [name for name, _ in occlusion.OCCLUDER_PARTS].index('mouth')
      spec = spec or dict(
        part=index, kind=kind, size=0.3, angle=0.5, aspect=0.7, texture='rocket',
        offset=[0.5, 0.5], shade=[0.9, 0.9, 0.9],
      )  # fmt: skip
      image, coverage, spec = occlusion.paste_occluder(frames[t], landmarks[t], rng, spec)
      centre = np.round(landmarks[t][face_topology.LIPS_OUTER, :2].mean(axis=0)).astype(int)
      assert coverage[centre[1], centre[0]] > 0.9, kind
      assert coverage[coverage > 0.5].size < 0.25 * coverage.size
      changed = np.abs(image.astype(int) - frames[t].astype(int)).max(axis=-1) > 0
      assert not changed[coverage == 0].any()
