"""reenact: the astronaut driven by a short cut of the carphone clip, motion maths, bad inputs."""

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import av
import cv2
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from reenact_jax import (
  bundled,
  crops,
  exported,
  exporter,
  face,
  face_topology,
  media,
  metrics,
  motion,
  occlusion,
  reenactment,
)
from tests.conftest import NUM_FRAMES
from tests.helpers import read_video

BATCH_SIZE = 4  # 10 frames -> batches of 4, 4 and a padded 2.
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def inputs(reenact_inputs):
  return reenact_inputs


def test_absolute_with_side_by_side(tiny_workdir, inputs, tmp_path):
  output = tmp_path / 'out.mp4'
  summary = reenactment.reenact(
    tiny_workdir,
    inputs['source'],
    inputs['driving'],
    output,
    reenactment.Options(motion='absolute', side_by_side=True, batch_size=BATCH_SIZE),
    progress=False,
  )
  assert summary['frames'] == NUM_FRAMES and summary['fps'] > 0 and summary['step'] == 3
  assert summary['motion'] == 'absolute' and summary['shots'] == 1
  frames, rate = read_video(output)
  assert frames.shape == (NUM_FRAMES, 32, 32, 3)  # configs/tiny.py image_size
  assert rate == inputs['rate']
  assert frames.std() > 2.0 and frames.max() > frames.min()
  assert not list(tmp_path.glob('.out.*'))  # No partial file left behind.

  side, side_rate = read_video(tmp_path / 'out_side_by_side.mp4')
  assert side.shape == (NUM_FRAMES, 32, 96, 3) and side_rate == inputs['rate']
  # Panels: the still source crop | the moving driving crop | the result (the output video).
  source_panel, driving_panel, result_panel = (
    side[..., :32, :],
    side[..., 32:64, :],
    side[..., 64:, :],
  )
  assert np.abs(source_panel.astype(int) - source_panel[0]).mean() < 3.0
  assert np.abs(driving_panel.astype(int) - driving_panel[0]).mean(axis=(1, 2, 3)).max() > 3.0
  assert np.abs(result_panel.astype(int) - frames).mean() < 6.0


def test_relative_best_frame_paste_back(tiny_workdir, inputs, tmp_path):
  output = tmp_path / 'pasted.mp4'
  summary = reenactment.reenact(
    tiny_workdir,
    inputs['source'],
    inputs['driving'],
    output,
    reenactment.Options(
      motion='relative', find_best_frame=True, paste_back=True, batch_size=BATCH_SIZE
    ),
    progress=False,
  )
  assert summary['frames'] == NUM_FRAMES and summary['motion'] == 'relative'
  assert len(summary['reference_frames']) == 1 and 0 <= summary['reference_frames'][0] < NUM_FRAMES
  frames, _ = read_video(output)
  import skimage.data

  portrait = skimage.data.astronaut().astype(int)
  assert frames.shape == (NUM_FRAMES, *portrait.shape)
  # Away from the person the portrait is untouched (up to H.264); on the head the tiny, barely
  # trained model's result shows.
  difference = np.abs(frames.astype(int) - portrait).mean(axis=(0, -1))
  assert difference[:, 400:].mean() < 3.0 and difference[:40].mean() < 3.0
  assert difference[90:160, 200:280].mean() > 3 * difference[:, 400:].mean() + 1.0


def _yaw(angle: float) -> np.ndarray:
  cos, sin = np.cos(angle), np.sin(angle)
  return np.array([[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]])


def _centred(points: np.ndarray) -> np.ndarray:
  return points - [0, 0, 1] * points[..., 2:].mean(axis=-2, keepdims=True)


def test_relative_landmarks_pose_and_expression():
  source = face_topology.canonical_landmarks().astype(np.float64)
  # The driving person: the source at another scale and place (A^-1), then per frame a head
  # turn and shift (T_t); frame 2 also opens the mouth (lower lip down) before turning.
  scale, offset = 0.7, np.array([0.1, 0.05, 0.0])
  person = scale * source + offset
  opening = np.zeros_like(source)
  opening[face_topology.LOWER_LIP, 1] = 0.05
  driving = []
  for t, (angle, shift) in enumerate([(0.0, 0.0), (0.2, 0.03), (0.3, -0.04), (-0.25, 0.02)]):
    face = person + (opening if t == 2 else 0.0)
    driving.append(face @ _yaw(angle).T + [shift, -shift, 0.0])
  driving = np.stack(driving)
  moved = motion.relative_landmarks(source.astype(np.float32), driving.astype(np.float32), 0)
  assert moved.shape == driving.shape and moved.dtype == np.float32
  # The source performs the driving pose change about its own centre, at its own scale, and
  # the mouth opens by the driving opening over the size ratio: since the driving person is the
  # source moved by a similarity, that is exactly A(D_t) = (D_t - offset) / scale.
  expected = _centred((driving - offset) / scale)
  np.testing.assert_allclose(moved, expected, atol=2e-4)
  np.testing.assert_allclose(moved[0], _centred(source), atol=2e-5)
  # The same frame without the opening: only the lower lip differs, by 0.05 / 0.7 downwards.
  closed = driving[2] - opening @ _yaw(0.3).T
  without = motion.relative_landmarks(
    source.astype(np.float32), np.stack([driving[0], closed]).astype(np.float32), 0
  )[1]
  shift = moved[2] - without
  lip_shift = shift[face_topology.LOWER_LIP]
  np.testing.assert_allclose(
    lip_shift, np.broadcast_to([0, 0.05 / scale, 0], lip_shift.shape), atol=1e-4
  )
  shift[face_topology.LOWER_LIP] = 0
  assert np.abs(shift).max() < 1e-4


def test_reference_frame_picks_the_matching_expression():
  source = face_topology.canonical_landmarks().astype(np.float64)
  driving = np.stack([0.8 * source @ _yaw(0.1 * t).T + 0.02 * t for t in range(5)])
  lip = face_topology.LOWER_LIP
  driving[:, lip, 1] += 0.06  # Every frame has the mouth open ...
  driving[3, lip, 1] -= 0.06  # ... but frame 3, which has the source's (closed) mouth.
  has_face = np.ones(5, bool)
  assert motion.reference_frame(source, driving, has_face, find_best=False) == 0
  assert motion.reference_frame(source, driving, has_face, find_best=True) == 3
  has_face[3] = False  # A filled-in frame (no face found there) is never the reference.
  assert motion.reference_frame(source, driving, has_face, find_best=True) != 3


def test_input_checks(tmp_path):
  image = tmp_path / 'big.png'
  from PIL import Image

  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
  with pytest.raises(media.InputError, match='megapixel limit'):
    media.read_image(image, max_pixels=500)
  assert media.read_image(image).shape == (20, 30, 3)
  (tmp_path / 'text.png').write_text('not an image')
  with pytest.raises(media.InputError, match='not a readable image'):
    media.read_image(tmp_path / 'text.png')
  (tmp_path / 'text.mp4').write_text('not a video')
  with pytest.raises(media.InputError, match='not a readable video'):
    media.probe_video(tmp_path / 'text.mp4')
  with pytest.raises(media.InputError, match='does not exist'):
    media.check_output(tmp_path / 'missing_folder' / 'out.mp4')
  with pytest.raises(media.InputError, match='extensions'):
    media.check_output(tmp_path / 'out.gif')


def _run_cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  return subprocess.run(
    [sys.executable, '-m', 'reenact_jax.reenact', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize('case', ['faceless_source', 'missing_driving', 'no_checkpoint'])
def test_cli_bad_inputs_fail_with_one_message(case, tiny_workdir, inputs, tmp_path):
  args = {
    'workdir': str(tiny_workdir),
    'source': str(inputs['source']),
    'driving': str(inputs['driving']),
    'output': str(tmp_path / 'out.mp4'),
  }
  expected = {
    'faceless_source': ('source', str(inputs['grey']), 'no face found'),
    'missing_driving': ('driving', str(tmp_path / 'missing.mp4'), 'does not exist'),
    'no_checkpoint': ('workdir', str(tmp_path / 'empty_run'), 'No checkpoints'),
  }[case]
  flag, value, message = expected
  args[flag] = value
  result = _run_cli(*(f'--{name}={value}' for name, value in args.items()), '--side-by-side')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0] and value in errors[0], result.stderr
  assert not (tmp_path / 'out.mp4').exists()


# What an application built on the exported artifact must never load.
TRAINING_MODULES = (
  'flax',
  'optax',
  'orbax',
  'grain',
  'reenact_jax.models',
  'reenact_jax.inference',
  'reenact_jax.trainer',
  'reenact_jax.steps',
  'reenact_jax.train_state',
  'reenact_jax.checkpointing',
  'reenact_jax.evaluation',
)


@pytest.fixture(scope='module')
def artifact(tiny_workdir, tmp_path_factory):
  folder = tmp_path_factory.mktemp('export') / 'artifact'
  exporter.export_generator(str(tiny_workdir), str(folder), verify=False)
  return folder


def test_reenact_from_an_export_loads_no_model_or_training_code(
  tiny_workdir, artifact, inputs, tmp_path
):
  output = tmp_path / 'out.mp4'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  # -X importtime lists every module the command imports (on stderr).
  result = subprocess.run(
    [sys.executable, '-X', 'importtime', '-m', 'reenact_jax.reenact', f'--export={artifact}']
    + [f'--source={inputs["source"]}', f'--driving={inputs["driving"]}', f'--output={output}']
    + ['--motion=absolute', f'--batch_size={BATCH_SIZE}', '--noaudio'],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  imported = {
    line.split('|')[-1].strip() for line in result.stderr.splitlines() if 'import time:' in line
  }
  assert 'reenact_jax.exported' in imported and 'reenact_jax.face' in imported
  loaded = sorted(
    name
    for name in imported
    if any(name == m or name.startswith(m + '.') for m in TRAINING_MODULES)
  )
  assert loaded == []
  assert 'from step 3' in result.stdout

  # The same frames as from the checkpoint: the renderer outputs agree to 1e-4 (test_export), and
  # H.264 at 32x32 turns float rounding into a level or two; another model differs by tens.
  reference = tmp_path / 'reference.mp4'
  options = reenactment.Options(motion='absolute', batch_size=BATCH_SIZE, audio=False)
  reenactment.reenact(tiny_workdir, inputs['source'], inputs['driving'], reference, options)
  got, _ = read_video(output)
  want, _ = read_video(reference)
  assert got.shape == want.shape == (NUM_FRAMES, 32, 32, 3)
  assert np.abs(got.astype(int) - want).mean() < 3.0
  assert got.std() > 2.0


def test_an_export_for_other_preprocessing_or_with_checkpoint_options_is_refused(
  artifact, tmp_path
):
  with pytest.raises(reenactment.ReenactError, match='--prior_only'):
    reenactment.open_renderer(None, artifact, reenactment.Options(prior_only=True))
  with pytest.raises(reenactment.ReenactError, match='--step'):
    reenactment.open_renderer(None, artifact, reenactment.Options(step=3))
  renderer = reenactment.open_renderer(None, artifact, reenactment.Options())
  assert (renderer.image_size, renderer.num_landmarks, renderer.step) == (32, 478, 3)

  changed = tmp_path / 'changed'
  shutil.copytree(artifact, changed)
  spec = json.loads((changed / exported.SPEC_FILE).read_text())
  spec['preprocessing']['crop_face_fraction'] = 0.5
  (changed / exported.SPEC_FILE).write_text(json.dumps(spec))
  with pytest.raises(reenactment.ReenactError, match=r'crop_face_fraction.*Re-export'):
    reenactment.load_export(changed)
  spec['preprocessing'] = {**crops.preprocessing_spec(), 'new_step': True}
  (changed / exported.SPEC_FILE).write_text(json.dumps(spec))
  with pytest.raises(reenactment.ReenactError, match=r'differs in: new_step\)'):
    reenactment.load_export(changed)
  with pytest.raises(reenactment.ReenactError, match='--export: Export folder'):
    reenactment.load_export(tmp_path / 'missing')


def test_the_command_takes_a_checkpoint_or_an_export_not_both(tiny_workdir, artifact, tmp_path):
  result = _run_cli(
    f'--workdir={tiny_workdir}',
    f'--export={artifact}',
    '--source=a.png',
    '--driving=b.mp4',
    f'--output={tmp_path / "out.mp4"}',
  )
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert '--workdir=RUN_DIR' in result.stderr and '--export=DIR' in result.stderr


@pytest.mark.slow  # Two more reenactments and a command start (make test stays within 10 min).
def test_a_jobs_file_runs_every_row_with_one_model_and_reports_the_bad_ones(
  tiny_workdir, inputs, tmp_path, monkeypatch
):
  from reenact_jax import jobs

  tracked = []
  track = reenactment.track_driving
  monkeypatch.setattr(
    reenactment, 'track_driving', lambda *a, **k: tracked.append(a[0]) or track(*a, **k)
  )
  jobs_file = tmp_path / 'jobs.csv'
  source, driving, grey = inputs['source'], inputs['driving'], inputs['grey']
  jobs_file.write_text(
    'source,driving,output,motion,side_by_side,smoothing\n'
    f'{source},{driving},out1.mp4,absolute,,\n'
    f'{grey},{driving},out2.mp4,,,\n'  # No face in the source.
    '\n'  # A blank line is skipped.
    f'{source},{driving},out3.mp4,relative,yes,\n'
    f'{source},{driving},out4.mp4,,,strong\n'  # Not a number.
  )
  rows = jobs.read_jobs(jobs_file)
  assert [row.row for row in rows] == [2, 3, 5, 6]
  assert rows[0].output == tmp_path / 'out1.mp4'  # Relative to the jobs file's folder.
  results = jobs.run_jobs(
    tiny_workdir, rows, reenactment.Options(batch_size=BATCH_SIZE), progress=False
  )
  errors = [result.error for result in results]
  assert [error is None for error in errors] == [True, False, True, False], errors
  assert 'no face found' in results[1].error and str(grey) in results[1].error
  assert "smoothing='strong'" in results[3].error
  assert results[0].summary['motion'] == 'absolute' and results[2].summary['motion'] == 'relative'
  for name in ('out1.mp4', 'out3.mp4', 'out3_side_by_side.mp4'):
    frames, _ = read_video(tmp_path / name)
    assert len(frames) == NUM_FRAMES
  assert not (tmp_path / 'out2.mp4').exists() and not (tmp_path / 'out1_side_by_side.mp4').exists()
  assert tracked == [driving]  # The shared driving clip was tracked once.
  table = jobs.format_summary(results)
  assert table.splitlines()[0] == '2 of 4 jobs done, 2 failed.'
  assert 'no face found' in table and str(tmp_path / 'out3.mp4') in table

  # A file the command cannot use is one error naming the problem.
  bad = tmp_path / 'bad.csv'
  bad.write_text('source,driving,output,colour\na,b,c,red\n')
  with pytest.raises(jobs.JobsFileError, match='unknown column.*colour'):
    jobs.read_jobs(bad)
  bad.write_text('source,driving\na,b\n')
  with pytest.raises(jobs.JobsFileError, match='missing: output'):
    jobs.read_jobs(bad)
  with pytest.raises(jobs.JobsFileError, match='cannot be read'):
    jobs.read_jobs(tmp_path / 'missing.csv')
  # The command asks for either one job or a jobs file.
  result = _run_cli(f'--workdir={tiny_workdir}', f'--output={tmp_path / "x.mp4"}')
  assert result.returncode != 0 and 'or --jobs' in result.stderr


# ------------------------------------------------------------- real inputs, prior alone


@pytest.fixture(scope='module')
def prior_run(tmp_path_factory):
  """A run directory with a step-0 checkpoint of the demo model at 64x64 whose parameters are
  zeros: enough for --prior-only (the run's sizes, none of its weights), and large enough for
  the face models."""
  from configs import demo
  from reenact_jax import checkpointing, models

  config = demo.get_config()
  config.image_size = 64
  generator = models.make_generator(config.model, config.image_size)
  shapes = jax.eval_shape(functools.partial(models.init_params, generator), jax.random.key(0))
  params = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
  workdir = tmp_path_factory.mktemp('prior_run')
  manager = checkpointing.make_manager(str(workdir), async_save=False)
  manager.save(
    0,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave({'ema_params': params}),
      data=ocp.args.JsonSave({}),
      config=ocp.args.JsonSave(checkpointing.config_to_json(config)),
    ),
  )
  manager.close()
  return workdir


def _write_video(path, frames, rate, audio: bool = False):
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('libx264', rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = 'yuv420p'
    sound = None
    if audio:
      sound = container.add_stream('aac', rate=16000)
      sound.layout = 'mono'
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode(None))
    if sound is not None:
      duration = len(frames) / float(rate)
      tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * duration)) / 16000)).astype(
        np.float32
      )
      for start in range(0, len(tone), 1024):
        chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], 'fltp', 'mono')
        chunk.sample_rate = 16000
        container.mux(sound.encode(chunk))
      container.mux(sound.encode(None))


@pytest.mark.slow  # ~25 s: a cut clip written, tracked and reenacted.
def test_prior_alone_follows_a_clip_with_a_cut_and_keeps_its_audio(prior_run, inputs, tmp_path):
  """The geometric prior (no weights) reenacts the astronaut with a clip of two shots (carphone,
  then a slowly zooming shot of the astronaut herself): the cut is found, the motion re-anchored,
  the audio copied, and the report finds the face in every output frame."""
  import skimage.data
  from PIL import Image

  frames = list(media.read_frames(bundled.carphone_path(), max_frames=12))
  height, width = frames[0].shape[:2]
  portrait = Image.fromarray(skimage.data.astronaut())
  for k in range(12):
    box = (4 * k, 4 * k, 512 - 4 * k, 512 - 4 * k)
    frames.append(np.asarray(portrait.resize((width, height), box=box)))
  shots = frames
  driving = tmp_path / 'two_shots.mp4'
  _write_video(driving, shots, inputs['rate'], audio=True)
  output = tmp_path / 'prior.mp4'
  summary = reenactment.reenact(
    prior_run,
    inputs['source'],
    driving,
    output,
    reenactment.Options(prior_only=True, report=True, batch_size=BATCH_SIZE),
    progress=False,
  )
  assert summary['step'] is None and summary['motion'] == 'relative'  # auto: another person.
  assert summary['shots'] == 2 and summary['reference_frames'][1] >= 12
  assert summary['audio']
  with av.open(str(output)) as container:
    assert container.streams.audio and container.streams.video[0].frames == 24
  report = summary['report']
  assert report['frames'] == 24 and report['face_found_fraction'] == 1.0
  assert set(report['correlation']) == set(metrics.MOTION_MEASURES)
  assert json.loads(pathlib.Path(summary['report_path']).read_text()) == report
  rendered, _ = read_video(output)
  # The first output frame is the source itself (relative motion from the reference frame).
  source_crop = rendered[0].astype(int)
  assert np.abs(rendered.astype(int) - source_crop).mean(axis=(1, 2, 3)).max() > 2.0


def test_small_face_in_a_large_photo_is_found_and_upscaled(prior_run, inputs, tmp_path):
  import skimage.data
  from PIL import Image

  portrait = skimage.data.astronaut()
  small = np.asarray(Image.fromarray(portrait).resize((150, 150)))  # A ~30 px face.
  canvas = np.full((500, 500, 3), 128, np.uint8)
  canvas[200:350, 280:430] = small
  photo = tmp_path / 'group.png'
  Image.fromarray(canvas).save(photo)
  summary = reenactment.reenact(
    prior_run,
    photo,
    inputs['driving'],
    tmp_path / 'small.mp4',
    reenactment.Options(prior_only=True, batch_size=BATCH_SIZE),
    progress=False,
  )
  assert 20 < summary['source_face_pixels'] < 45 and summary['frames'] == NUM_FRAMES


@pytest.mark.slow  # ~40 s: a video source decoded, tracked and reenacted twice.
def test_a_video_source_uses_its_most_frontal_frame_and_absolute_motion_for_itself(
  prior_run, inputs, tmp_path
):
  summary = reenactment.reenact(
    prior_run,
    inputs['driving'],
    inputs['driving'],
    tmp_path / 'self.mp4',
    reenactment.Options(prior_only=True, batch_size=BATCH_SIZE),
    progress=False,
  )
  assert summary['source'].startswith(str(inputs['driving'])) and 'frame' in summary['source']
  assert summary['motion'] == 'absolute'  # auto: the source is a frame of the driving clip.
  chosen = int(summary['source'].rsplit(' ', 1)[1])
  fixed = reenactment.reenact(
    prior_run,
    inputs['driving'],
    inputs['driving'],
    tmp_path / 'self3.mp4',
    reenactment.Options(prior_only=True, source_frame=3, batch_size=BATCH_SIZE),
    progress=False,
  )
  assert fixed['source'].endswith('frame 3') and 0 <= chosen < NUM_FRAMES

  # Three views of the video: its most frontal frame, then the most different head poses.
  sampled = reenactment.reenact(
    prior_run,
    inputs['driving'],
    inputs['driving'],
    tmp_path / 'views.mp4',
    reenactment.Options(prior_only=True, source_views=3, batch_size=BATCH_SIZE),
    progress=False,
  )
  views = [int(view.rsplit(' ', 1)[1]) for view in sampled['extra_sources']]
  assert sampled['source'] == summary['source'] and len(set(views + [chosen])) == 3
  with pytest.raises(reenactment.ReenactError, match='samples views from a video'):
    reenactment.reenact(
      prior_run,
      inputs['source'],
      inputs['driving'],
      tmp_path / 'image_views.mp4',
      reenactment.Options(prior_only=True, source_views=2),
      progress=False,
    )


def test_one_euro_filter_smooths_jitter_and_follows_motion():
  rng = np.random.default_rng(0)
  still = 0.5 + 0.01 * rng.standard_normal(200)
  smoothed = motion.one_euro(still, 30.0, min_cutoff=1.0, beta=1.0)
  assert np.std(smoothed[20:]) < 0.4 * np.std(still[20:])
  step = np.where(np.arange(60) < 30, 0.0, 0.3)
  followed = motion.one_euro(step, 30.0, min_cutoff=1.0, beta=1.0)
  assert followed[40] > 0.27  # A fast move passes within a third of a second.
  np.testing.assert_allclose(
    motion.smooth_landmarks(step[:, None, None], 30.0, 0.0, [(0, 60)])[:, 0, 0], step
  )


def test_driving_smoothing_removes_jitter_without_lagging_the_motion():
  # A head nodding at 1 Hz (0.1 normalised units) seen through landmark jitter, at 30 fps.
  rng = np.random.default_rng(0)
  frames = np.arange(150)
  motion_true = 0.1 * np.sin(2 * np.pi * frames / 30.0)
  seen = motion_true + 0.01 * rng.standard_normal(150)
  smoothed = motion.smooth_landmarks(seen[:, None, None], 30.0, 1.0, [(0, 150)])[:, 0, 0]
  inner = slice(15, -15)
  assert (
    np.abs(smoothed - motion_true)[inner].mean() < 0.8 * np.abs(seen - motion_true)[inner].mean()
  )
  # No lag: the smoothed motion lines up with the true one at shift 0 (a causal filter trails).
  shifts = range(-5, 6)
  errors = [np.abs(np.roll(smoothed, -k) - motion_true)[inner].mean() for k in shifts]
  assert list(shifts)[int(np.argmin(errors))] == 0
  # A steady turn: no lag at the shot's first and last frames either.
  ramp = 0.005 * frames.astype(np.float64)
  turned = motion.smooth_landmarks(ramp[:, None, None], 30.0, 1.0, [(0, 150)])[:, 0, 0]
  assert np.abs(turned - ramp)[[0, 1, -2, -1]].max() < 1e-3
  # Shots are smoothed apart: a cut's jump is not blurred across it.
  jump = np.where(frames < 75, 0.0, 0.5)
  split = motion.smooth_landmarks(jump[:, None, None], 30.0, 1.0, [(0, 75), (75, 150)])
  np.testing.assert_allclose(split[:, 0, 0], jump, atol=1e-6)


def test_driving_smoothing_keeps_a_blink():
  # 478 jittering landmarks; at frames 40-41 the upper lids close onto the lower lids.
  rng = np.random.default_rng(0)
  canonical = face_topology.canonical_landmarks()
  seen = np.repeat(canonical[None], 90, 0) + 0.004 * rng.standard_normal((90, 478, 3))
  seen = seen.astype(np.float32)
  upper, lower = face_topology.UPPER_LIDS, face_topology.LOWER_LIDS
  gap = canonical[lower, 1] - canonical[upper, 1]
  seen[40:42, upper, 1] += gap
  smoothed = motion.smooth_landmarks(seen, 30.0, 1.0, [(0, 90)])
  for eye in (slice(0, 7), slice(7, 14)):  # each eye's upper lid
    kept = (smoothed[40:42, upper[eye], 1] - smoothed[30, upper[eye], 1]).mean() / gap[eye].mean()
    assert kept > 0.6
  # Elsewhere the jitter is still smoothed away.
  oval = face_topology.FACE_OVAL
  assert np.diff(smoothed[:, oval], axis=0).std() < 0.5 * np.diff(seen[:, oval], axis=0).std()


def test_cuts_are_found_between_shots_not_within_them():
  frames = list(media.read_frames(bundled.carphone_path(), max_frames=20))
  signatures = np.stack([media.frame_signature(f) for f in frames])
  assert motion.shot_starts(signatures) == [0]  # Camera and head motion within one shot.
  other = np.stack(
    [media.frame_signature(np.ascontiguousarray(f[::-1, ::-1] // 2)) for f in frames]
  )
  assert motion.shot_starts(np.concatenate([signatures, other])) == [0, 20]


@pytest.mark.slow  # ~20 s: an occluded clip written, tracked and reenacted.
def test_an_occluded_driving_face_is_filled_in_and_scored_against_the_clean_clip(
  prior_run, inputs, tmp_path
):
  """An object over the jaw in 10 of 24 driving frames: reenact finds the covered region, says
  so, fills its landmarks (the driving landmarks differ from --nofill_occluded's only there), and
  --report_against scores the output against the clip without the occluder."""
  frames = list(media.read_frames(bundled.carphone_path(), max_frames=24))
  landmarker = face.FaceLandmarker()
  clean = [landmarker(frame) for frame in frames]
  jaw = [name for name, _ in occlusion.OCCLUDER_PARTS].index('jaw')
  spec = dict(
    part=jaw, kind='object', size=0.35, angle=1.0, aspect=0.8, texture='coffee',
    offset=[0.3, 0.3], shade=[1.0, 1.0, 1.0],
  )  # fmt: skip
  occluded = list(frames)
  for t in range(8, 18):
    occluded[t], _, _ = occlusion.paste_occluder(
      frames[t], clean[t], np.random.default_rng(0), spec
    )
  clean_path, occluded_path = tmp_path / 'clean.mp4', tmp_path / 'occluded.mp4'
  _write_video(clean_path, frames, inputs['rate'])
  _write_video(occluded_path, occluded, inputs['rate'])
  options = reenactment.Options(
    prior_only=True, report=True, report_against=str(clean_path), batch_size=BATCH_SIZE
  )
  tracks = {}
  summary = reenactment.reenact(
    prior_run, inputs['source'], occluded_path, tmp_path / 'out.mp4', options, progress=False,
    tracks=tracks,
  )  # fmt: skip
  assert 6 <= summary['occluded_frames'] <= 10 and summary['occluded_regions']['jaw'] >= 6
  assert summary['occlusion_filled']
  assert any('part of the face covered' in note for note in reenactment.summary_notes(summary))
  report = summary['report']
  assert report['frames'] == 24 and report['face_found_fraction'] == 1.0
  track = tracks[reenactment.track_key(occluded_path, 0)]
  assert not track.occluded[:8].any() and not track.occluded[18:].any()
  filled, _ = reenactment.driving_motion(track.landmarks[0], track, options, 25.0, False)
  kept, _ = reenactment.driving_motion(
    track.landmarks[0], track, dataclasses.replace(options, fill_occluded=False), 25.0, False
  )
  changed = np.abs(filled - kept).max(axis=-1) > 1e-6  # (F, N)
  assert changed[8:18].any()
  regions = occlusion.landmark_regions()
  # Unsmoothed, only the covered regions' landmarks of the covered frames change.
  unsmoothed = dataclasses.replace(options, smoothing=0.0)
  filled, _ = reenactment.driving_motion(track.landmarks[0], track, unsmoothed, 25.0, False)
  kept, _ = reenactment.driving_motion(
    track.landmarks[0], track, dataclasses.replace(unsmoothed, fill_occluded=False), 25.0, False
  )
  changed = np.abs(filled - kept).max(axis=-1) > 1e-6
  assert not (changed & ~track.occluded[:, regions]).any() and changed.any()
  # Scored against a clip of another length: one message, before anything is rendered.
  short = tmp_path / 'short.mp4'
  _write_video(short, frames[:10], inputs['rate'])
  with pytest.raises(reenactment.ReenactError, match='--report_against'):
    reenactment.reenact(
      prior_run, inputs['source'], occluded_path, tmp_path / 'never.mp4',
      dataclasses.replace(options, report_against=str(short)), progress=False,
    )  # fmt: skip
  assert not (tmp_path / 'never.mp4').exists()
  with pytest.raises(reenactment.ReenactError, match='give --report too'):
    reenactment.reenact(
      prior_run, inputs['source'], occluded_path, tmp_path / 'never.mp4',
      dataclasses.replace(options, report=False), progress=False,
    )  # fmt: skip


@pytest.mark.slow  # ~25 s: a two-view render compiled (test_fusion checks the views in process).
def test_several_source_views_render_with_a_checkpoint_and_are_refused_by_an_export(
  tiny_workdir, artifact, inputs, tmp_path
):
  # Another view of the person: the portrait mirrored (its face turned the other way).
  image = media.read_image(inputs['source'])
  mirrored = tmp_path / 'mirrored.png'
  cv2.imwrite(str(mirrored), cv2.cvtColor(np.ascontiguousarray(image[:, ::-1]), cv2.COLOR_RGB2BGR))
  options = reenactment.Options(motion='absolute', batch_size=BATCH_SIZE, audio=False)
  one = reenactment.reenact(
    tiny_workdir, inputs['source'], inputs['driving'], tmp_path / 'one.mp4', options
  )
  two = reenactment.reenact(
    tiny_workdir, [inputs['source'], mirrored], inputs['driving'], tmp_path / 'two.mp4', options
  )
  assert one['extra_sources'] == [] and two['extra_sources'] == [str(mirrored)]
  got, _ = read_video(tmp_path / 'two.mp4')
  want, _ = read_video(tmp_path / 'one.mp4')
  assert got.shape == want.shape == (NUM_FRAMES, 32, 32, 3)
  assert np.abs(got.astype(int) - want).mean() > 0.5  # The other view shows somewhere.
  with pytest.raises(reenactment.ReenactError, match='several --source images need'):
    reenactment.reenact(
      None,
      [inputs['source'], mirrored],
      inputs['driving'],
      tmp_path / 'export.mp4',
      options,
      renderer=reenactment.load_export(artifact),
    )
