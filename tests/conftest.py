"""Every test process sees 8 fake CPU devices, so sharded code paths run as on a pod slice."""

import fcntl
import os
import pathlib
import shutil

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()
# The tests compile far more than they run: XLA:CPU's cheapest code generation compiles ~25%
# faster (measured on the tiny train steps), at twice the run time of a step.
if 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Compiling the models dominates test time on CPU; tests (and the subprocesses they start, which
# inherit the environment) share compiled executables through a persistent cache.
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    '.pytest_cache',
    'jax_compilation_cache',
  ),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_setup():
  """trainer.Setup of configs/tiny.py on the 8 devices, shared by the session's tiny runs: its
  train steps are traced and compiled once (pass it as train_and_evaluate(..., setup=))."""
  from configs import tiny
  from reenact_jax import trainer

  return trainer.Setup(tiny.get_config())


def _run_shared_dir(tmp_path_factory) -> pathlib.Path:
  """A directory that every pytest-xdist worker of this test run sees (the run's own temporary
  directory without xdist)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory, request):
  """A run directory holding a 3-step checkpoint of configs/tiny.py, trained once per test run:
  the first worker that needs it trains it while the others wait for it (its two compiled train
  steps are most of a worker's time otherwise)."""
  from configs import tiny
  from reenact_jax import trainer

  shared = _run_shared_dir(tmp_path_factory)
  workdir, done = shared / 'tiny_run', shared / 'tiny_run.done'
  with open(shared / 'tiny_run.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # A worker that failed halfway.
      config = tiny.get_config()
      config.train.total_steps = 3
      config.train.image_log_every = 0
      trainer.train_and_evaluate(config, str(workdir), setup=request.getfixturevalue('tiny_setup'))
      done.touch()
  return workdir


@pytest.fixture(scope='session')
def carphone_cache_64(tmp_path_factory):
  """A data.cache_dir holding the demo clip prepared at 64x64 (carphone_64/), made once."""
  from reenact_jax import bundled

  cache = tmp_path_factory.mktemp('demo_cache')
  bundled.prepared_demo_dir(cache, resolution=64)
  return cache


# The first frames of the bundled driving clip, as a short test clip.
NUM_FRAMES = 10


@pytest.fixture(scope='session')
def reenact_inputs(tmp_path_factory) -> dict:
  """The astronaut as a PNG, the first NUM_FRAMES carphone frames as an mp4 (same fps) and a
  faceless grey image: {'source', 'driving', 'rate', 'grey', 'folder'}."""
  import av
  import numpy as np
  from PIL import Image

  from reenact_jax import bundled

  folder = tmp_path_factory.mktemp('reenact_inputs')
  source, _ = bundled.example_inputs(folder)
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
