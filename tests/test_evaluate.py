"""Evaluation: metric math, LPIPS weight loading against numpy, and the protocol on a tiny run."""

import json
import os
import subprocess
import sys

import cv2
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from configs import tiny
from reenact_jax import (
  demo_pipeline,
  evaluation,
  expressions,
  face,
  face_topology,
  geometry,
  input_pipeline,
  lpips,
  metrics,
  models,
  records,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------- metric math


def test_image_metrics_of_a_known_difference():
  rng = np.random.default_rng(0)
  target = rng.uniform(0.2, 0.8, (2, 24, 24, 3)).astype(np.float32)
  prediction = target.copy()
  prediction[1] += 0.1  # MSE 0.01 -> 20 dB, L1 0.1.
  np.testing.assert_allclose(metrics.l1(prediction, target), [0.0, 0.1], atol=1e-6)
  np.testing.assert_allclose(metrics.psnr(prediction, target), [100.0, 20.0], atol=1e-3)
  ssim = np.asarray(metrics.ssim(prediction, target))
  assert ssim[0] == pytest.approx(1.0, abs=1e-6) and ssim[1] < 1.0


def test_pose_error_of_a_known_rotation():
  angles = np.array([[20.0, -10.0, 5.0], [-35.0, 25.0, -60.0]])
  rotation = np.asarray(geometry.euler_to_rotation(jnp.asarray(angles)), np.float64)
  canonical = face_topology.canonical_landmarks().astype(np.float64)
  stable = np.asarray(face_topology.STABLE)
  # The same face turned by known angles (plus scale and shift): the pose follows exactly.
  posed = 0.9 * canonical[None] @ np.swapaxes(rotation, 1, 2) + np.array([0.05, -0.02, 0.0])
  np.testing.assert_allclose(metrics.head_pose_angles(posed, canonical, stable), angles, atol=1e-2)
  error = metrics.pose_error(posed[:1], posed[1:], canonical, stable)
  np.testing.assert_allclose(error, np.abs(angles[:1] - angles[1:]), atol=1e-2)
  # Across the ±180° roll seam the error is the short way round.
  seam = np.array([[0.0, 0.0, 175.0], [0.0, 0.0, -175.0]])
  turned = canonical[None] @ np.swapaxes(np.asarray(geometry.euler_to_rotation(seam)), 1, 2)
  np.testing.assert_allclose(
    metrics.pose_error(turned[:1], turned[1:], canonical, stable), [[0.0, 0.0, 10.0]], atol=1e-2
  )


def test_expression_error_ignores_head_pose_but_sees_the_mouth():
  canonical = face_topology.canonical_landmarks().astype(np.float64)[None]
  stable = np.asarray(face_topology.STABLE)
  rotation = np.asarray(geometry.euler_to_rotation(jnp.asarray([[15.0, 10.0, -8.0]])))
  moved = 1.1 * canonical @ np.swapaxes(rotation, 1, 2) + 0.1
  assert metrics.expression_error(moved, canonical, stable)[0] < 1e-5
  opened = moved.copy()
  lower_lip = np.asarray(face_topology.LOWER_LIP)
  opened[0, lower_lip, 1] += 0.05  # Open the mouth (y grows downwards).
  expected = 0.05 / 1.1 * len(lower_lip) / canonical.shape[1]
  assert metrics.expression_error(opened, canonical, stable)[0] == pytest.approx(expected, rel=0.05)


def test_cosine_distance():
  a = np.array([[1.0, 0.0], [1.0, 1.0]])
  b = np.array([[0.0, 2.0], [3.0, 3.0]])
  np.testing.assert_allclose(metrics.cosine_distance(a, b), [1.0, 0.0], atol=1e-12)


# ----------------------------------------------------------------------- landmarks on real faces


@pytest.fixture(scope='module')
def astronaut():
  """The astronaut portrait's face region at 256x256, float32 [0, 1]."""
  image = cv2.resize(skimage.data.astronaut()[0:320, 80:400], (256, 256), cv2.INTER_AREA)
  return image.astype(np.float32) / 255.0


@pytest.fixture(scope='module')
def landmarker():
  return face.FaceLandmarker()


def _landmark_results(landmarker, output, truth, *, with_ground_truth=True):
  evaluator = evaluation.LandmarkEvaluator(
    with_ground_truth=with_ground_truth, landmarker=landmarker
  )
  evaluator.update(evaluation.Rendered(source=truth, driving=truth, output=output))
  return dict(evaluator.run())


def test_perfect_reconstruction_of_a_real_face(astronaut, landmarker):
  truth = astronaut[None]
  image = evaluation.ImageEvaluator()
  image.update(evaluation.Rendered(source=truth, driving=truth, output=truth.copy()))
  values = dict(image.run())
  assert values['l1'] == 0.0
  assert values['ssim'] == pytest.approx(1.0, abs=1e-5)
  assert values['psnr'] == pytest.approx(100.0)
  landmarks = _landmark_results(landmarker, truth.copy(), truth)
  assert landmarks['landmark_frames'] == 1 and landmarks['no_face_output'] == 0
  assert landmarks['akd'] < 0.5
  assert landmarks['pose_error'] < 0.5 and landmarks['expression_error'] < 1e-3


def test_akd_and_pose_follow_a_known_image_motion(astronaut, landmarker):
  truth = astronaut[None]
  # Shift by (dx, dy) = (6, 8) px: AKD about 10 px, no change of head pose.
  shift = np.float32([[1, 0, 6], [0, 1, 8]])
  shifted = cv2.warpAffine(astronaut, shift, (256, 256), borderMode=cv2.BORDER_REFLECT)[None]
  values = _landmark_results(landmarker, shifted, truth)
  assert values['akd'] == pytest.approx(10.0, abs=1.5)
  assert values['pose_error'] < 2.0
  # Rotate by 12° in the image plane about the face: roll error about 12°, yaw/pitch small.
  turn = cv2.getRotationMatrix2D((128.0, 100.0), 12.0, 1.0)
  turned = cv2.warpAffine(astronaut, turn, (256, 256), borderMode=cv2.BORDER_REFLECT)[None]
  values = _landmark_results(landmarker, turned, truth, with_ground_truth=False)
  assert 'akd' not in values
  assert values['pose_error_roll'] == pytest.approx(12.0, abs=2.0)
  assert values['pose_error_yaw'] < 4.0 and values['pose_error_pitch'] < 4.0


def test_no_face_is_counted_and_reported(astronaut, landmarker):
  truth = astronaut[None]
  blank = np.full_like(truth, 0.5)
  values = _landmark_results(landmarker, blank, truth)
  assert values['no_face_output'] == 1 and values['no_face_driving'] == 0
  assert values['landmark_frames'] == 0
  assert isinstance(values['akd'], evaluation.Skip) and '1 of 1 output' in values['akd'].reason


# ------------------------------------------------------------------------ identity evaluator


def test_identity_evaluator_with_a_stand_in_model():
  rng = np.random.default_rng(1)
  source = rng.uniform(size=(6, 8, 8, 3)).astype(np.float32)
  output = source.copy()
  driving = rng.uniform(size=(6, 8, 8, 3)).astype(np.float32)
  embed = lambda image: image.reshape(-1).astype(np.float64) - 127.5  # A stand-in descriptor.
  to_source = evaluation.IdentityEvaluator(embed, to_source=True)
  to_source.update(evaluation.Rendered(source=source, driving=driving, output=output))
  assert dict(to_source.run())['identity_distance'] == pytest.approx(0.0, abs=1e-12)
  to_truth = evaluation.IdentityEvaluator(embed, to_source=False)
  to_truth.update(evaluation.Rendered(source=source, driving=driving, output=output))
  assert dict(to_truth.run())['identity_distance'] > 0.1


# ------------------------------------------------------------------------------------- LPIPS

_WIDTHS = (4, 6, 8, 8, 8)
# torchvision VGG16 `features` as (kind, output channels); 'M' is a 2x2 max pool.
_VGG16_CFG = (1, 1, 'M', 2, 2, 'M', 3, 3, 3, 'M', 4, 4, 4, 'M', 5, 5, 5)


def _made_up_state_dict(rng, key_style='lpips'):
  """Random VGG16-shaped (narrow) weights under the public lpips state-dict keys."""
  tensors = {}
  index, channels = 0, 3
  starts = (0, 4, 9, 16, 23, 30)
  for item in _VGG16_CFG:
    if item == 'M':
      index += 1
      continue
    width = _WIDTHS[item - 1]
    slice_number = next(k for k in range(1, 6) if starts[k - 1] <= index < starts[k])
    prefix = f'net.slice{slice_number}.{index}.' if key_style == 'lpips' else f'features.{index}.'
    scale = np.sqrt(2.0 / (9 * channels))
    tensors[prefix + 'weight'] = (rng.normal(size=(width, channels, 3, 3)) * scale).astype(
      np.float32
    )
    tensors[prefix + 'bias'] = rng.normal(scale=0.1, size=(width,)).astype(np.float32)
    index, channels = index + 2, width  # conv, ReLU
  for layer, width in enumerate(_WIDTHS):
    tensors[f'lin{layer}.model.1.weight'] = rng.uniform(size=(1, width, 1, 1)).astype(np.float32)
  tensors['scaling_layer.shift'] = np.array([-0.030, -0.088, -0.188], np.float32).reshape(
    1, 3, 1, 1
  )
  tensors['scaling_layer.scale'] = np.array([0.458, 0.448, 0.450], np.float32).reshape(1, 3, 1, 1)
  return tensors


def _numpy_lpips(tensors, image_a, image_b):
  """Reference LPIPS in float64 NCHW numpy, walking the torchvision layer list (one image)."""

  def conv(x, weight, bias):
    height, width = x.shape[1:]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((weight.shape[0], height, width))
    for dy in range(3):
      for dx in range(3):
        out += np.einsum(
          'oi,ihw->ohw', weight[:, :, dy, dx], padded[:, dy : dy + height, dx : dx + width]
        )
    return out + bias[:, None, None]

  def features(image):
    shift = tensors['scaling_layer.shift'].reshape(3, 1, 1).astype(np.float64)
    scale = tensors['scaling_layer.scale'].reshape(3, 1, 1).astype(np.float64)
    x = (image.transpose(2, 0, 1).astype(np.float64) * 2 - 1 - shift) / scale
    taps, index = [], 0
    for item in _VGG16_CFG + ('M',):
      if item == 'M':
        taps.append(x)  # the ReLU output ending each LPIPS slice
        channels, height, width = x.shape
        x = x[:, : height // 2 * 2, : width // 2 * 2]
        x = x.reshape(channels, height // 2, 2, width // 2, 2).max(axis=(2, 4))
        index += 1
        continue
      key = next(k for k in tensors if k.endswith(f'.{index}.weight'))
      x = np.maximum(conv(x, tensors[key], tensors[key.replace('weight', 'bias')]), 0.0)
      index += 2
    return taps

  total = 0.0
  for layer, (a, b) in enumerate(zip(features(image_a), features(image_b), strict=True)):
    a = a / (np.sqrt((a**2).sum(axis=0, keepdims=True)) + 1e-10)
    b = b / (np.sqrt((b**2).sum(axis=0, keepdims=True)) + 1e-10)
    head = tensors[f'lin{layer}.model.1.weight'].reshape(-1, 1, 1).astype(np.float64)
    total += ((a - b) ** 2 * head).sum(axis=0).mean()
  return total


@pytest.mark.parametrize('key_style', ['lpips', 'torchvision'])
def test_lpips_loader_matches_numpy_reference(tmp_path, key_style):
  rng = np.random.default_rng(2)
  tensors = _made_up_state_dict(rng, key_style)
  path = tmp_path / 'lpips_vgg.npz'
  np.savez(path, **tensors)
  images = rng.uniform(size=(2, 20, 18, 3)).astype(np.float32)  # odd sizes: floor pooling
  references = np.clip(images + rng.normal(scale=0.2, size=images.shape), 0, 1).astype(np.float32)
  distance_fn = lpips.make_distance_fn(path)
  got = np.asarray(distance_fn(images, references))
  expected = [_numpy_lpips(tensors, a, b) for a, b in zip(images, references, strict=True)]
  assert got.shape == (2,)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  assert np.all(got > 1e-3)
  np.testing.assert_allclose(np.asarray(distance_fn(images, images)), 0.0, atol=1e-6)


def test_lpips_loader_names_a_missing_tensor(tmp_path):
  tensors = _made_up_state_dict(np.random.default_rng(3))
  del tensors['lin2.model.1.weight']
  path = tmp_path / 'broken.npz'
  np.savez(path, **tensors)
  with pytest.raises(lpips.LpipsError, match='lin2.model.1.weight'):
    lpips.load(path)
  with pytest.raises(lpips.LpipsError, match='does not exist'):
    lpips.load(tmp_path / 'missing.npz')


# --------------------------------------------------------------------------- the protocol


def test_evaluation_pairs_follow_the_protocol():
  clips = [
    records.Clip('a', 'a0', 0, 3),
    records.Clip('a', 'a1', 3, 2),
    records.Clip('b', 'b0', 5, 4),
  ]
  same = list(evaluation.evaluation_pairs(clips, cross_identity=False, max_clips=2))
  assert same == [(0, 0), (0, 1), (0, 2), (3, 3), (3, 4)]
  cross = list(evaluation.evaluation_pairs(clips, cross_identity=True, max_clips=0))
  # a0 and a1 are driven by b0; b0 by the next clip of another identity, a0.
  assert cross == [(0, d) for d in range(5, 9)] + [(3, d) for d in range(5, 9)] + [
    (5, d) for d in range(0, 3)
  ]
  with pytest.raises(evaluation.EvaluationError, match='two identities'):
    list(evaluation.evaluation_pairs(clips[:2], cross_identity=True, max_clips=0))


class _StandIn(nn.Module):
  """A generator stand-in: outputs gain * source (gain 1) or a flat grey image (gain 0)."""

  @nn.compact
  def __call__(self, source, source_landmarks, driving_landmarks, source_mask, **kwargs):
    gain = self.param('gain', nn.initializers.ones, ())
    return {'output': source * gain + 0.5 * (1.0 - gain)}


def test_evaluate_batches_pad_and_pair_correctly(tmp_path):
  config = tiny.get_config()
  config.eval.batch_size = 3  # 2 clips x 8 frames -> 5 full batches and one padded to 3
  result = evaluation.evaluate(
    config,
    {'gain': np.float32(1.0)},
    _StandIn(),
    split='test',
    max_clips=2,
    workdir=str(tmp_path),
    step=5,
  )
  frames = input_pipeline.make_frame_source(config, 'test')
  expected = [
    np.abs(frames.frame(clip.first)['image'] - frames.frame(clip.first + f)['image']).mean()
    for clip in frames.clips[:2]
    for f in range(clip.num_frames)
  ]
  assert result['num_frames'] == 16
  assert result['metrics']['l1'] == pytest.approx(np.mean(expected), rel=1e-5)
  assert os.path.exists(tmp_path / 'eval' / '5.json')


def test_evaluate_reports_outputs_without_a_face(tmp_path):
  config = tiny.get_config()
  result = evaluation.evaluate(
    config,
    {'gain': np.float32(0.0)},
    _StandIn(),
    split='test',
    max_clips=1,
    workdir=None,
  )
  values, skipped = result['metrics'], result['skipped']
  assert values['no_face_output'] == result['num_frames'] == 8
  assert values['landmark_frames'] == 0
  for name in ('akd', 'pose_error', 'expression_error'):
    assert values[name] is None and '8 of 8 output frames' in skipped[name]
  assert values['l1'] is not None and values['ssim'] is not None


def test_evaluate_tiny_run(tiny_workdir):
  workdir = str(tiny_workdir)
  result = evaluation.evaluate_workdir(workdir, max_clips=2)
  values, skipped = result['metrics'], result['skipped']
  assert result['num_clips'] == 2 and result['num_frames'] == 16  # tiny: 8 frames per clip
  for name in ('l1', 'psnr', 'ssim'):
    assert np.isfinite(values[name]), name
  assert 0.0 < values['l1'] < 1.0 and -1.0 <= values['ssim'] <= 1.0
  # 32x32 synthetic heads are too small for the face mesh: AKD must say so, with counts.
  if values['landmark_frames'] == 0:
    assert values['akd'] is None
    assert str(values['no_face_output']) in skipped['akd']
  else:
    assert np.isfinite(values['akd'])
  missing = max(values['no_face_output'], values['no_face_driving'])
  assert values['landmark_frames'] <= result['num_frames'] - missing
  for name in ('lpips', 'identity_distance'):
    assert name in skipped and skipped[name] and values[name] is None

  path = os.path.join(workdir, 'eval', f'{result["step"]}.json')
  with open(path) as file:
    written = json.load(file)
  assert written['skipped'] == skipped and written['metrics']['l1'] == pytest.approx(values['l1'])
  assert os.listdir(os.path.join(workdir, 'tensorboard'))

  cross = evaluation.evaluate_workdir(workdir, max_clips=1, cross_identity=True)
  assert cross['num_frames'] == 8 and 'l1' not in cross['metrics']
  assert 'pose_error' in cross['metrics'] and 'lpips' in cross['skipped']
  assert os.path.exists(os.path.join(workdir, 'eval', f'{cross["step"]}_cross.json'))


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run(
    [sys.executable, '-m', 'reenact_jax.evaluate', *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow  # ~15 s: a command start and an evaluation (make test stays within 10 minutes).
def test_cli_prints_one_json_line(tiny_workdir):
  done = _run_cli(f'--workdir={tiny_workdir}', '--max_clips=1', '--cross-identity')
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result['cross_identity'] and result['num_frames'] == 8
  assert set(result['skipped']) >= {'lpips', 'identity_distance'}


def test_cli_reports_a_missing_checkpoint(tmp_path):
  done = _run_cli(f'--workdir={tmp_path}')
  assert done.returncode == 1
  assert 'No checkpoints' in done.stderr and 'Traceback' not in done.stderr


def test_evaluate_on_the_demo_split_gives_finite_metrics(carphone_cache_64):
  """The demo's held-out carphone frames, with a generator that shows the source face: every
  metric of the same-identity protocol is finite (faces are found in output and driving)."""
  from configs import demo

  config = demo.get_config()
  config.image_size = 64
  config.data.cache_dir = str(carphone_cache_64)
  result = evaluation.evaluate(
    config, {'gain': np.float32(1.0)}, _StandIn(), split='test', workdir=None
  )
  values = result['metrics']
  assert result['num_clips'] == 1 and result['num_frames'] == 12
  for name in ('l1', 'psnr', 'ssim', 'akd', 'pose_error', 'expression_error'):
    assert values[name] is not None and np.isfinite(values[name]), (name, result['skipped'])
  # The source is the first held-out frame: it matches itself and differs from later frames.
  assert 0.0 < values['l1'] < 0.5 and values['akd'] > 0.0


def test_compare_correlations_says_which_output_follows_the_driving_clip_better():
  rng = np.random.default_rng(0)
  wanted = np.sin(np.linspace(0, 12, 120))
  close = wanted + 0.2 * rng.normal(size=120)
  loose = wanted + 1.0 * rng.normal(size=120)
  better = metrics.compare_correlations(wanted, close, loose)
  assert better['difference'] > 0 and better['low'] > 0, better
  worse = metrics.compare_correlations(wanted, loose, close)
  assert worse['difference'] < 0 and worse['high'] < 0, worse
  assert worse['difference'] == pytest.approx(-better['difference'])
  same = metrics.compare_correlations(wanted, close, close)
  assert same == {'difference': 0.0, 'low': 0.0, 'high': 0.0}
  assert metrics.compare_correlations(wanted, np.ones(120), close)['difference'] is None


def test_demo_compares_model_and_prior_on_the_frames_where_both_show_a_face():
  rng = np.random.default_rng(1)
  wanted = {name: rng.normal(size=10) for name in metrics.MOTION_MEASURES}

  def report(frames, noise):
    return {
      'per_frame': {
        'frame': frames,
        'driving': {name: wanted[name][frames].tolist() for name in wanted},
        'output': {
          name: (wanted[name][frames] + noise * rng.normal(size=len(frames))).tolist()
          for name in wanted
        },
      }
    }

  # The prior lost frame 3's face, the model frame 7's: 8 frames in common.
  model = report([0, 1, 2, 3, 4, 5, 6, 8, 9], 0.1)
  prior = report([0, 1, 2, 4, 5, 6, 7, 8, 9], 2.0)
  comparison = demo_pipeline.compare_reports(model, prior)
  assert comparison['frames'] == 8
  for name in metrics.MOTION_MEASURES:
    assert comparison[name]['difference'] > 0, (name, comparison[name])
  assert 'skipped' in demo_pipeline.compare_reports({'correlation': {}}, prior)


def test_face_measures_follow_the_eyes_and_the_gaze():
  canonical = face_topology.canonical_landmarks()
  frames = np.repeat(canonical[None], 3, 0)
  # Frame 1: both irises move right by a tenth of an eye's width; frame 2: the lids close.
  width = np.linalg.norm(canonical[33, :2] - canonical[133, :2])
  frames[1, 468:478, 0] += 0.1 * width
  frames[2, face_topology.UPPER_LIDS, 1] = canonical[face_topology.LOWER_LIDS, 1]
  measures = metrics.face_measures(frames, canonical, face_topology.STABLE)
  np.testing.assert_allclose(measures['gaze_x'][1] - measures['gaze_x'][0], 0.1, atol=0.01)
  assert abs(measures['gaze_y'][1] - measures['gaze_y'][0]) < 0.01
  assert measures['eye_opening'][2] < 0.35 * measures['eye_opening'][0]
  np.testing.assert_allclose(measures['yaw'], measures['yaw'][0], atol=0.5)  # Eyes are not pose.
  # Mirrored faces look the other way.
  mirrored = frames[1].copy()
  mirrored[:, 0] *= -1
  mirrored = mirrored[face_topology.flip_permutation()]
  flipped = metrics.face_measures(mirrored[None], canonical, face_topology.STABLE)
  np.testing.assert_allclose(flipped['gaze_x'][0], -measures['gaze_x'][1], atol=0.01)


def test_gaze_error_measures_how_the_output_gaze_moves_against_the_drivers():
  rng = np.random.default_rng(0)
  driving = {'gaze_x': rng.normal(0.0, 0.05, 50), 'gaze_y': rng.normal(0.0, 0.03, 50)}
  # The same motion about another resting gaze (the source's own) is followed exactly.
  follows = {'gaze_x': driving['gaze_x'] + 0.2, 'gaze_y': driving['gaze_y'] - 0.1}
  assert metrics.gaze_error(driving, follows) == pytest.approx(0.0, abs=1e-12)
  frozen = {'gaze_x': np.full(50, 0.2), 'gaze_y': np.full(50, -0.1)}
  spread = np.hypot(
    driving['gaze_x'] - driving['gaze_x'].mean(), driving['gaze_y'] - driving['gaze_y'].mean()
  )
  assert metrics.gaze_error(driving, frozen) == pytest.approx(spread.mean())
  # Looking left when the driver looks right is twice as wrong as not moving at all.
  opposite = {'gaze_x': -driving['gaze_x'], 'gaze_y': -driving['gaze_y']}
  assert metrics.gaze_error(driving, opposite) == pytest.approx(2 * spread.mean())
  half = {'gaze_x': 0.5 * driving['gaze_x'], 'gaze_y': 0.5 * driving['gaze_y']}
  assert 0 < metrics.gaze_error(driving, half) < metrics.gaze_error(driving, frozen)


@pytest.mark.slow  # ~15 s: an evaluation of its own.
def test_expressions_protocol_scores_what_the_output_reproduces(carphone_cache_64, tmp_path):
  """evaluate --expressions on the demo's held-out frames: an output that ignores the driving
  landmarks (the source shown as it is) reproduces none of any edit, exactly; the geometric
  prior, which moves the source by them, reproduces part of the one-sided smiles."""
  from configs import demo

  config = demo.get_config()
  config.image_size = 64
  config.data.cache_dir = str(carphone_cache_64)
  config.eval.batch_size = 5  # 24 outputs: the last batch is padded
  frames = input_pipeline.make_frame_source(config, 'test')
  pairs = list(evaluation.expression_pairs(frames.clips, max_clips=0, frames_per_clip=4))
  assert len(pairs) == 4 * (1 + len(expressions.EDITS))
  assert {name for _, _, name in pairs} == {'', *expressions.EDITS}
  ignoring = evaluation.evaluate_expressions(
    config, {'gain': np.float32(1.0)}, _StandIn(), split='test', workdir=str(tmp_path), step=3
  )
  values = ignoring['metrics']
  assert ignoring['expressions'] and ignoring['num_frames'] == len(pairs)
  assert values['face_found_fraction'] == 1.0
  for name in expressions.EDITS:
    assert values[f'expression_{name}_reproduced'] == pytest.approx(0.0, abs=1e-6)
  for region in expressions.regions():
    assert np.isfinite(values[f'expression_error_{region}'])
  assert os.path.exists(tmp_path / 'eval' / '3_expressions.json')

  generator = models.make_generator(config.model, config.image_size)
  prior = evaluation.evaluate_expressions(config, {}, generator, split='test', prior_only=True)
  for side in ('right', 'left'):
    assert prior['metrics'][f'expression_smile_{side}_reproduced'] > 0.1


def test_expressions_and_cross_identity_are_not_run_together(tiny_workdir):
  with pytest.raises(evaluation.EvaluationError, match='choose one'):
    evaluation.evaluate_workdir(str(tiny_workdir), expressions=True, cross_identity=True)


class _ShowsTheOtherView(nn.Module):
  """A generator stand-in: outputs its first extra source view, or the source without one."""

  @nn.compact
  def __call__(self, source, source_landmarks, driving_landmarks, source_mask, **kwargs):
    self.param('unused', nn.initializers.zeros, ())
    extra = kwargs.get('extra_sources')
    return {'output': source if extra is None else extra[:, 0]}


def test_several_sources_take_the_most_different_pose_and_compare_with_one(tmp_path):
  config = tiny.get_config()
  config.eval.batch_size = 3
  result = evaluation.evaluate(
    config,
    {'unused': np.float32(0.0)},
    _ShowsTheOtherView(),
    split='test',
    max_clips=2,
    workdir=str(tmp_path),
    step=5,
    num_sources=2,
  )
  frames = input_pipeline.make_frame_source(config, 'test')
  views = {int(clip): extras for clip, extras in result['source_frames'].items()}
  want_view, want_one = [], []
  for clip in frames.clips[:2]:
    (view,) = views[clip.first]
    poses = metrics.head_pose_angles(
      np.stack([frames.frame(clip.first + f)['landmarks'] for f in range(clip.num_frames)]),
      face_topology.canonical_landmarks(),
      face_topology.STABLE,
    )
    assert view - clip.first == np.argmax(np.linalg.norm(poses - poses[0], axis=-1))
    for index in range(clip.first, clip.first + clip.num_frames):
      if index != view:  # The view's own frame is not driven.
        truth = frames.frame(index)['image']
        want_view.append(np.abs(frames.frame(view)['image'] - truth).mean())
        want_one.append(np.abs(frames.frame(clip.first)['image'] - truth).mean())
  assert result['num_sources'] == 2 and result['num_frames'] == 14
  assert result['metrics']['l1'] == pytest.approx(np.mean(want_view), rel=1e-5)
  assert result['one_source']['l1'] == pytest.approx(np.mean(want_one), rel=1e-5)
  assert os.path.exists(tmp_path / 'eval' / '5_2sources.json')
  with pytest.raises(evaluation.EvaluationError, match='cross-identity'):
    evaluation.evaluate(
      config, {}, _ShowsTheOtherView(), split='test', cross_identity=True, num_sources=2
    )
