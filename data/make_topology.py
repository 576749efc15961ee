"""Derives the face-topology asset (flip permutation, canonical face) from a real portrait.

    python -m data.make_topology [--output=reenact_jax/assets/face_topology.npz]

Runs the 478-point face mesh on scikit-image's astronaut portrait and on its mirror image.
- Flip permutation: the mirror image's landmarks, mirrored back, land on the original's
  landmarks of the opposite side; a symmetric assignment (scipy's linear_sum_assignment on the
  symmetrised distance) gives the permutation, checked to be an involution that swaps the known
  eye corners and irises and fixes the midline.
- Canonical face: the average of both estimates, rotated to frontal (the rotation that makes the
  face its own mirror image, halved: yaw and roll are observable that way, pitch is kept as
  photographed), made exactly symmetric, centred, and scaled so the face oval spans 60% of the
  frame in the normalised convention (x, y in [-1, 1], z on x's scale, mean z 0).
"""

import pathlib

import numpy as np
import scipy.optimize
import scipy.spatial.transform
import skimage.data
from absl import app, flags

from reenact_jax import cli, face, face_topology

DEFAULT_OUTPUT = pathlib.Path(face_topology.__file__).parent / 'assets' / 'face_topology.npz'
FACE_FRACTION = 0.6
_MIRROR = np.diag([-1.0, 1.0, 1.0])

_OUTPUT = flags.DEFINE_string('output', str(DEFAULT_OUTPUT), 'Where to write the asset.')


def _landmarks(landmarker: face.FaceLandmarker, image: np.ndarray) -> np.ndarray:
  landmarker.reset()
  points = landmarker(np.ascontiguousarray(image))
  if points is None:
    raise RuntimeError('No face found in the astronaut portrait: are the face models intact?')
  return points.astype(np.float64)


def flip_permutation(original: np.ndarray, mirrored_back: np.ndarray) -> np.ndarray:
  """(N,) permutation p with mirrored_back[i] ~ original[p[i]] (both (N, 3), same frame)."""
  cost = np.linalg.norm(mirrored_back[:, None, :2] - original[None, :, :2], axis=-1)
  # A flip permutation is an involution: score i->j and j->i together.
  rows, cols = scipy.optimize.linear_sum_assignment(cost + cost.T)
  permutation = np.empty(len(rows), np.int64)
  permutation[rows] = cols
  return permutation


def check_permutation(permutation: np.ndarray) -> None:
  n = len(permutation)
  if not np.array_equal(np.sort(permutation), np.arange(n)):
    raise ValueError('flip permutation is not a permutation')
  if not np.array_equal(permutation[permutation], np.arange(n)):
    raise ValueError('flip permutation is not an involution')
  pairs = [(33, 263), (133, 362), (61, 291), (234, 454), (468, 473)]
  for a, b in pairs:
    if permutation[a] != b:
      raise ValueError(f'flip permutation maps {a} to {permutation[a]}, expected {b}')
  for midline in (1, 4, 6, 10, 13, 14, 152, 168):
    if permutation[midline] != midline:
      raise ValueError(f'flip permutation moves midline point {midline}')


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Rotation R (3, 3) minimising |dst - src @ R.T| for centred (N, 3) point sets."""
  u, _, vt = np.linalg.svd(dst.T @ src)
  fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
  return u @ fix @ vt


def canonical_face(points: np.ndarray, permutation: np.ndarray) -> np.ndarray:
  """(N, 3) frontal, symmetric, normalised face from (N, 3) pixel landmarks of one face."""
  face = points - points.mean(0)
  for _ in range(5):
    mirrored = face[permutation] @ _MIRROR
    rotation = _kabsch(mirrored, face)
    # face = R0 frontal and mirrored = (D R0 D) frontal, so the fit is R0 D R0^T D ~ R0^2 for
    # yaw and roll: undo half of it.
    half = scipy.spatial.transform.Rotation.from_matrix(rotation).as_rotvec() / 2
    face = face @ scipy.spatial.transform.Rotation.from_rotvec(half).as_matrix()
  face = (face + face[permutation] @ _MIRROR) / 2
  oval = face[face_topology.FACE_OVAL, :2]
  low, high = oval.min(0), oval.max(0)
  face[:, :2] -= (low + high) / 2
  face *= 2 * FACE_FRACTION / float(max(high - low))
  face[:, 2] -= face[:, 2].mean()
  return face


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  output = pathlib.Path(_OUTPUT.value)

  image = skimage.data.astronaut()
  width = image.shape[1]
  landmarker = face.FaceLandmarker()
  original = _landmarks(landmarker, image)
  mirrored = _landmarks(landmarker, image[:, ::-1])
  mirrored_back = mirrored.copy()
  mirrored_back[:, 0] = width - mirrored[:, 0]

  permutation = flip_permutation(original, mirrored_back)
  check_permutation(permutation)
  # original[j] ~ mirrored_back[permutation[j]] (involution): two estimates of each point.
  points = (original + mirrored_back[permutation]) / 2
  canonical = canonical_face(points, permutation)

  output.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
    output,
    flip_permutation=permutation.astype(np.int16),
    canonical=canonical.astype(np.float32),
  )
  residual = np.abs(mirrored_back[permutation] - original)[:, :2].mean()
  print(
    f'wrote {output}: {len(permutation)} landmarks, '
    f'{int((permutation == np.arange(len(permutation))).sum())} on the midline, '
    f'flip residual {residual:.2f} px'
  )


if __name__ == '__main__':
  cli.run(main)
