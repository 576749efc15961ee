"""reenact: the astronaut driven by a short cut of the carphone clip, motion maths, bad inputs."""

import fractions
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest

from reenact_jax import bundled, face_topology, media, motion, reenactment

NUM_FRAMES = 10
BATCH_SIZE = 4  # 10 frames -> batches of 4, 4 and a padded 2.
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _read_video(path) -> tuple[np.ndarray, fractions.Fraction]:
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    frames = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(stream)])
    return frames, stream.average_rate


@pytest.fixture(scope='module')
def inputs(tmp_path_factory) -> dict:
  """The astronaut as a PNG and the first NUM_FRAMES carphone frames as an mp4 (same fps)."""
  import skimage.data
  from PIL import Image

  folder = tmp_path_factory.mktemp('reenact_inputs')
  source = folder / 'astronaut.png'
  Image.fromarray(skimage.data.astronaut()).save(source)
  driving = folder / 'carphone10.mp4'
  with av.open(str(bundled.carphone_path())) as reader, av.open(str(driving), 'w') as writer:
    in_stream = reader.streams.video[0]
    out_stream = writer.add_stream('libx264', rate=in_stream.average_rate)
    out_stream.width, out_stream.height = (
      in_stream.codec_context.width,
      in_stream.codec_context.height,
    )
    out_stream.pix_fmt = 'yuv420p'
    for index, frame in enumerate(reader.decode(in_stream)):
      if index == NUM_FRAMES:
        break
      image = frame.to_ndarray(format='rgb24')
      writer.mux(out_stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')))
    writer.mux(out_stream.encode(None))
    rate = in_stream.average_rate
  grey = folder / 'grey.png'
  Image.fromarray(np.full((160, 120, 3), 128, np.uint8)).save(grey)
  return {'source': source, 'driving': driving, 'rate': rate, 'grey': grey, 'folder': folder}


def test_absolute_with_side_by_side(tiny_workdir, inputs, tmp_path):
  output = tmp_path / 'out.mp4'
  summary = reenactment.reenact(
    tiny_workdir,
    inputs['source'],
    inputs['driving'],
    output,
    side_by_side=True,
    batch_size=BATCH_SIZE,
    progress=False,
  )
  assert summary['frames'] == NUM_FRAMES and summary['fps'] > 0 and summary['step'] == 3
  frames, rate = _read_video(output)
  assert frames.shape == (NUM_FRAMES, 32, 32, 3)  # configs/tiny.py image_size
  assert rate == inputs['rate']
  assert frames.std() > 2.0 and frames.max() > frames.min()
  assert not list(tmp_path.glob('.out.*'))  # No partial file left behind.

  side, side_rate = _read_video(tmp_path / 'out_side_by_side.mp4')
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
    relative=True,
    find_best_frame=True,
    paste_back=True,
    batch_size=BATCH_SIZE,
    progress=False,
  )
  assert summary['frames'] == NUM_FRAMES and 0 <= summary['reference_frame'] < NUM_FRAMES
  frames, _ = _read_video(output)
  import skimage.data

  portrait = skimage.data.astronaut().astype(int)
  assert frames.shape == (NUM_FRAMES, *portrait.shape)
  # Away from the face the portrait is untouched (up to H.264); on the face the tiny, barely
  # trained model's result shows.
  difference = np.abs(frames.astype(int) - portrait).mean(axis=(0, -1))
  assert difference[:, 400:].mean() < 3.0 and difference[400:].mean() < 3.0
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
