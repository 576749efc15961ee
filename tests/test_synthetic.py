"""Tests for reenact_jax.synthetic: procedural clips and still-portrait re-posing."""

import cv2
import numpy as np
import pytest

from reenact_jax import augmentation, crops, face_topology, synthetic

NUM_FRAMES = 16


def _frame(clip, frame, size=32, seed=0):
  return synthetic.render_frame(clip, frame, image_size=size, num_frames=NUM_FRAMES, seed=seed)


def _mouth_gap(landmarks):
  """Distance between the middles of the upper and lower inner lip, normalised units."""
  canonical = face_topology.canonical_landmarks()
  inner = np.asarray(face_topology.LIPS_INNER)
  upper, lower = synthetic._lip_arcs(inner, canonical)
  centre_x = canonical[inner, 0].mean()
  top = upper[np.argmin(np.abs(canonical[upper, 0] - centre_x))]
  bottom = lower[np.argmin(np.abs(canonical[lower, 0] - centre_x))]
  return np.linalg.norm(landmarks[bottom, :2] - landmarks[top, :2])


def _umeyama_rotation(src, dst):
  """(3, 3) rotation of the least-squares similarity dst ≈ s R src + t."""
  src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
  u, _, vt = np.linalg.svd(dst_c.T @ src_c)
  d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
  return u @ d @ vt


def test_render_frame_shapes_ranges_and_determinism():
  first = _frame(3, 5, size=48)
  again = _frame(3, 5, size=48)
  assert first['image'].shape == (48, 48, 3) and first['image'].dtype == np.float32
  assert first['landmarks'].shape == (478, 3) and first['landmarks'].dtype == np.float32
  assert first['mask'].shape == (48, 48, 1) and first['mask'].dtype == np.float32
  assert 0.0 <= first['image'].min() and first['image'].max() <= 1.0
  assert set(np.unique(first['mask'])) <= {0.0, 1.0}
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  synthetic._clip.cache_clear()  # Determinism must not rely on the cache.
  for key in first:
    np.testing.assert_array_equal(first[key], _frame(3, 5, size=48)[key])


def test_motion_does_not_depend_on_image_size_and_respects_limits():
  np.testing.assert_array_equal(
    _frame(5, 4, size=32)['landmarks'], _frame(5, 4, size=96)['landmarks']
  )
  for clip in range(4):
    for frame in range(NUM_FRAMES):
      motion = synthetic.clip_motion(clip, frame, num_frames=NUM_FRAMES, seed=0)
      assert abs(motion['yaw']) <= 25 and abs(motion['pitch']) <= 15 and abs(motion['roll']) <= 10
      assert 0.0 <= motion['mouth'] <= 1.0


def test_468_landmarks_without_irises():
  out = synthetic.render_frame(0, 1, image_size=32, num_frames=4, seed=0, num_landmarks=468)
  assert out['landmarks'].shape == (468, 3)
  assert np.isfinite(out['image']).all()


def test_clips_and_seeds_differ():
  a, b, c = _frame(0, 0), _frame(1, 0), _frame(0, 0, seed=1)
  assert np.abs(a['image'] - b['image']).mean() > 0.02
  assert np.abs(a['image'] - c['image']).mean() > 0.02
  assert np.abs(a['landmarks'] - b['landmarks']).max() > 0.01


def test_landmarks_inside_image_and_centred_in_depth():
  for clip in range(6):
    for frame in range(0, NUM_FRAMES, 3):
      landmarks = _frame(clip, frame)['landmarks']
      assert np.abs(landmarks[:, :2]).max() < 1.0
      assert abs(landmarks[:, 2].mean()) < 1e-5


def test_mask_is_face_oval_fill_of_plausible_area():
  for clip in range(4):
    out = _frame(clip, 7, size=64)
    area = out['mask'].mean()
    assert 0.1 < area < 0.7, area
    expected = crops.face_oval_mask(out['landmarks'], 64, 64)
    np.testing.assert_array_equal(out['mask'], expected)
    # Independent check: pixel centres inside the oval polygon (matplotlib-free ray test).
    polygon = out['landmarks'][face_topology.FACE_OVAL, :2]
    centres = (np.arange(64) + 0.5) / 32 - 1
    gx, gy = np.meshgrid(centres, centres)
    inside = np.zeros((64, 64), bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
      crosses = (y0 > gy) != (y1 > gy)
      x_at = x0 + (gy - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
      inside ^= crosses & (gx < x_at)
    assert (inside != out['mask'][..., 0].astype(bool)).mean() < 0.03


def test_mouth_opens_and_closes_over_a_clip():
  for clip in range(3):
    gaps = [_mouth_gap(_frame(clip, f)['landmarks']) for f in range(NUM_FRAMES)]
    assert max(gaps) - min(gaps) > 0.03, gaps


def test_mouth_cavity_drawn_dark_when_open():
  clip = 2
  gaps = [_mouth_gap(_frame(clip, f)['landmarks']) for f in range(NUM_FRAMES)]
  out = _frame(clip, int(np.argmax(gaps)), size=128)
  landmarks, image = out['landmarks'], out['image']
  cavity = crops.mask_from_polygon(landmarks[face_topology.LIPS_INNER, :2], 128, 128)
  cavity = cavity[..., 0].astype(bool)
  assert cavity.sum() > 10
  assert image[cavity].mean() < 0.2


def test_head_pose_varies_over_a_clip():
  for clip in range(3):
    start = _frame(clip, 0)['landmarks'].astype(np.float64)
    angles = []
    for frame in range(1, NUM_FRAMES):
      rotation = _umeyama_rotation(start, _frame(clip, frame)['landmarks'].astype(np.float64))
      angles.append(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))
    assert max(angles) > 5.0, angles
    assert max(angles) < 2 * (25 + 15 + 10), angles


def test_image_follows_landmarks_under_head_motion():
  # Warping frame 0 by the true landmark motion (affine fit) must explain frame k on the face
  # far better than leaving it in place.
  size = 64
  for clip in range(2):
    a, b = _frame(clip, 0, size), _frame(clip, 5, size)
    src = (a['landmarks'][:, :2] + 1) * size / 2 - 0.5
    dst = (b['landmarks'][:, :2] + 1) * size / 2 - 0.5
    matrix, _ = cv2.estimateAffine2D(src, dst, method=cv2.LMEDS)
    warped = cv2.warpAffine(a['image'], matrix, (size, size), flags=cv2.INTER_LINEAR)
    face = (a['mask'][..., 0] > 0) & (cv2.warpAffine(a['mask'], matrix, (size, size)) > 0.99)
    face &= b['mask'][..., 0] > 0
    moved_error = np.abs(warped - b['image'])[face].mean()
    still_error = np.abs(a['image'] - b['image'])[face].mean()
    assert moved_error < 0.6 * still_error, (moved_error, still_error)


@pytest.mark.parametrize(
  'motion',
  [
    dict(max_rotation_deg=20.0, max_scale=0.1, max_translation=0.1),
    dict(max_rotation_deg=0.0, max_scale=0.0, max_translation=0.0, max_deformation=0.05),
  ],
  ids=['similarity_and_deformation', 'deformation_only'],
)
def test_repose_moves_image_and_landmarks_together(motion):
  # A blob drawn at a landmark must land on the reposed landmark (sub-pixel: the inverse map
  # used for the landmarks is exact up to interpolation).
  size = 64
  rng = np.random.default_rng(0)
  landmarks = _frame(4, 3, size)['landmarks']
  gx, gy = np.meshgrid(np.arange(size), np.arange(size))
  largest_move = 0.0
  for trial in range(6):
    index = int(rng.integers(0, 468))
    x_px, y_px = (landmarks[index, :2] + 1) * size / 2 - 0.5
    image = np.zeros((size, size, 3), np.float32)
    image[..., 0] = np.exp(-((gx - x_px) ** 2 + (gy - y_px) ** 2) / (2 * 1.5**2))
    moved, moved_landmarks, mask, _ = augmentation.repose(
      image,
      landmarks,
      np.ones((size, size, 1), np.float32),
      rng=np.random.default_rng(trial),
      **motion,
    )
    assert moved.shape == image.shape and moved.dtype == np.float32
    assert moved_landmarks.shape == landmarks.shape and moved_landmarks.dtype == np.float32
    weight = moved[..., 0]
    centroid = np.array([(weight * gx).sum(), (weight * gy).sum()]) / weight.sum()
    expected = (moved_landmarks[index, :2] + 1) * size / 2 - 0.5
    assert np.linalg.norm(centroid - expected) < 0.3, (trial, centroid, expected)
    largest_move = max(largest_move, np.linalg.norm(expected - [x_px, y_px]))
    np.testing.assert_array_equal(mask, crops.face_oval_mask(moved_landmarks, size, size))
    assert abs(moved_landmarks[:, 2].mean()) < 1e-5
  assert largest_move > 1.5  # It really moved.


def test_repose_is_a_similarity_plus_small_deformation_of_the_landmarks():
  landmarks = _frame(1, 0)['landmarks']
  image = _frame(1, 0)['image']
  _, moved, _, _ = augmentation.repose(
    image,
    landmarks,
    _frame(1, 0)['matte'],
    rng=np.random.default_rng(5),
    max_rotation_deg=15.0,
    max_scale=0.1,
    max_translation=0.05,
  )
  rotation = _umeyama_rotation(landmarks.astype(np.float64), moved.astype(np.float64))
  angle = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
  assert abs(angle) <= 15.0 + 2.0
  # Out-of-plane axes untouched: the rotation is about the view axis.
  np.testing.assert_allclose(rotation[2], [0, 0, 1], atol=0.02)


def test_repose_is_deterministic_in_its_rng():
  out = _frame(0, 0)
  kwargs = dict(max_rotation_deg=10.0, max_scale=0.05, max_translation=0.05)
  args = (out['image'], out['landmarks'], out['matte'])
  a = augmentation.repose(*args, rng=np.random.default_rng(7), **kwargs)
  b = augmentation.repose(*args, rng=np.random.default_rng(7), **kwargs)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


def test_repose_moves_the_head_over_a_still_background():
  size = 64
  out = _frame(3, 0, size)
  moved, landmarks, _, matte = augmentation.repose(
    out['image'],
    out['landmarks'],
    out['matte'],
    rng=np.random.default_rng(2),
    max_rotation_deg=15.0,
    max_scale=0.1,
    max_translation=0.1,
  )
  # Far from the person (the frame's top corners here) nothing moves.
  person = np.maximum(out['matte'][..., 0], matte[..., 0]) > 0
  background = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
  background[16:] = False
  assert background.sum() > 50
  np.testing.assert_allclose(moved[background], out['image'][background], atol=1e-6)
  # The head did move: its landmarks, and the moved matte covers them.
  assert np.abs(landmarks[:, :2] - out['landmarks'][:, :2]).mean() > 0.02
  centre = np.round((landmarks[:468, :2].mean(0) + 1) * size / 2 - 0.5).astype(int)
  assert matte[centre[1], centre[0], 0] > 0.9


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match='frame_index'):
    _frame(0, NUM_FRAMES)
  with pytest.raises(ValueError, match='landmarks'):
    crops.face_oval_mask(np.zeros((478,)), 8, 8)
  with pytest.raises(ValueError, match='max_deformation'):
    augmentation.repose(
      np.zeros((8, 8, 3)),
      np.zeros((478, 3)),
      np.zeros((8, 8, 1)),
      rng=np.random.default_rng(0),
      max_rotation_deg=1.0,
      max_scale=0.0,
      max_translation=0.0,
      max_deformation=0.2,
    )


def test_true_flow_moves_the_source_skin_onto_the_driving_skin():
  size = 64
  clip, source_frame, driving_frame = 1, 0, 5
  source = _frame(clip, source_frame, size)
  driving = _frame(clip, driving_frame, size)
  flow = synthetic.true_flow(
    clip, source_frame, driving_frame, image_size=size, num_frames=NUM_FRAMES, seed=0
  )
  assert flow.shape == (size, size, 2)
  coords = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
  grid = np.stack(np.meshgrid(coords, coords), axis=-1) + flow
  pixels = ((grid + 1.0) * (size / 2) - 0.5).astype(np.float32)
  warped = cv2.remap(source['image'], pixels[..., 0], pixels[..., 1], cv2.INTER_LINEAR)
  skin = cv2.erode(driving['mask'][..., 0], np.ones((5, 5), np.uint8)) > 0
  skin &= (
    crops.mask_from_polygon(driving['landmarks'][face_topology.LIPS_OUTER, :2], size, size)[..., 0]
    == 0
  )
  for eye in (face_topology.RIGHT_EYE, face_topology.LEFT_EYE):  # Eyes look and blink alone.
    opening = crops.mask_from_polygon(driving['landmarks'][eye, :2], size, size)[..., 0]
    skin &= cv2.dilate(opening, np.ones((3, 3), np.uint8)) == 0
  warped_error = np.abs(warped - driving['image'])[skin].mean()
  still_error = np.abs(source['image'] - driving['image'])[skin].mean()
  # Brows and nose are drawn at their landmarks (3D motion, not the affine) and stay off.
  assert warped_error < 0.5 * still_error, (warped_error, still_error)


def test_clips_look_around_and_blink():
  num_frames = 100
  blinks, gaze = [], []
  for clip in range(8):
    motions = [
      synthetic.clip_motion(clip, t, num_frames=num_frames, seed=0) for t in range(num_frames)
    ]
    blinks.append(max(m['blink'] for m in motions))
    gaze.append(np.std([m['gaze_x'] for m in motions]))
  assert 2 <= sum(b > 0.9 for b in blinks) <= 7  # Some clips blink, not all.
  assert min(gaze) > 0.02
  # At the height of a blink the upper lids lie on the lower lids and no iris is drawn.
  clip = next(c for c, b in enumerate(blinks) if b > 0.9)
  motions = [synthetic.clip_motion(clip, t, num_frames=num_frames, seed=0) for t in range(100)]
  closed = int(np.argmax([m['blink'] for m in motions]))
  opened = min(range(num_frames), key=lambda t: motions[t]['blink'])
  render = lambda t: synthetic.render_frame(clip, t, image_size=96, num_frames=100, seed=0)
  for frame, is_closed in ((render(closed), True), (render(opened), False)):
    landmarks = frame['landmarks']
    gap = np.abs(landmarks[159, 1] - landmarks[145, 1])
    assert (gap < 0.01) == is_closed
    # Pupils: the flat pupil colour, around the eyes.
    eyes = landmarks[np.concatenate([face_topology.RIGHT_EYE, face_topology.LEFT_EYE]), :2]
    (x0, y0), (x1, y1) = (
      ((eyes.min(0) + 1) * 48 - 3).astype(int),
      ((eyes.max(0) + 1) * 48 + 3).astype(int),
    )
    box = frame['image'][y0:y1, x0:x1]
    pupils = (np.abs(box - np.array([0.04, 0.04, 0.05])) < 0.005).all(-1).sum()
    assert (pupils == 0) == is_closed
