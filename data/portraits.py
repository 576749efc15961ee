"""Still portraits bundled with registry packages, prepared for pseudo-pair training.

The demo has one real clip of one person, too little for a model that must work one-shot on
other faces. So it also trains on pseudo-pairs made from still portraits: a random smooth
re-posing of a portrait and its landmarks (reenact_jax.synthetic.repose) gives a source/driving
pair whose motion is known exactly. The portraits are read from installed packages
(scikit-image's `astronaut`, and its mirror image as a second pose distribution); nothing is
downloaded.
"""

import os
import pathlib

import numpy as np

from data import clips as clips_lib


def portrait_images() -> dict[str, np.ndarray]:
  """name -> RGB uint8 image of every bundled portrait."""
  from skimage import data as skimage_data

  astronaut = skimage_data.astronaut()
  return {'astronaut': astronaut, 'astronaut_mirrored': np.ascontiguousarray(astronaut[:, ::-1])}


def crop_portrait(image: np.ndarray, resolution: int, landmarker=None):
  """(crop (S, S, 3) uint8, landmarks (N, 3) normalised to the crop, box) of one portrait.

  Uses the same detector, landmark model and crop rule as data preparation. Raises ValueError
  when the image has no face.
  """
  from data import face_models

  landmarker = landmarker or face_models.FaceLandmarker()
  landmarker.reset()
  points = landmarker(image)
  if points is None:
    raise ValueError('no face found')
  box = clips_lib.crop_box(points[None], image.shape[0], image.shape[1])
  crop = clips_lib.crop_frame(image, box, resolution)
  return crop, clips_lib.normalise_landmarks(points[None], box)[0], box


def prepared_portraits(cache_dir: str | os.PathLike, resolution: int) -> pathlib.Path:
  """An .npz with 'images' (P, S, S, 3) uint8 and 'landmarks' (P, N, 3) float32, made once."""
  path = pathlib.Path(cache_dir) / f'portraits_{resolution}.npz'
  if path.is_file():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  images, landmarks = [], []
  for name, image in portrait_images().items():
    try:
      crop, points, _ = crop_portrait(image, resolution)
    except ValueError as error:
      raise RuntimeError(f'Bundled portrait {name!r}: {error}.') from error
    images.append(crop)
    landmarks.append(points)
  scratch = path.with_suffix('.partial.npz')
  np.savez(scratch, images=np.stack(images), landmarks=np.stack(landmarks).astype(np.float32))
  scratch.rename(path)
  return path
