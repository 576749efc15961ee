"""Asymmetric and extreme expressions: edits of real frames' landmarks, and how well an output
reproduces them, region by region (`evaluate --expressions`).

A real clip rarely shows a wink or a one-sided smile, and an average over all landmarks hides
what a symmetric model gets wrong. Here each edit moves one part of a real frame's 478 face-mesh
landmarks (MediaPipe topology, face_topology) the way the expression does, so the wanted
landmarks are known exactly:

  wink_right, wink_left    the eye's upper lid onto its lower lid;
  smile_right, smile_left  one mouth corner up and out, the lips and cheek near it following;
  mouth_open               the lower lip, chin and jaw dropped (the mouth wide open).

"right" and "left" are the subject's (MediaPipe's RIGHT_EYE is in the image's left half).

The error of an output in a region is the mean 2D distance between the landmarks found on the
output and the wanted ones over the region's points, after the similarity fitted on the stable
landmarks (face_topology.STABLE) has taken out the head's pose, in eye distances (the outer eye
corners' distance of the wanted face). The edit's size there is the same error of the output
rendered without the edit: ignoring the edit scores 0 of it, reproducing it nears 1 (the
landmarks found on an output are never exact).
"""

import functools

import numpy as np

from reenact_jax import face_topology, metrics

EDITS = ('wink_right', 'wink_left', 'smile_right', 'smile_left', 'mouth_open')

# The lid gap a wink leaves, in eye widths (lids on top of each other would cross under noise).
WINK_GAP = 0.02
# A one-sided smile moves its corner by this much up and out, in mouth widths, and the face
# around it by a Gaussian of the distance to the corner (this radius, in mouth widths).
SMILE_UP, SMILE_OUT, SMILE_RADIUS = 0.22, 0.1, 0.3
# A wide-open mouth drops the lower lip and jaw by this much, in mouth widths; the drop fades in
# over this band below the mouth corners (the corners themselves stay).
MOUTH_DROP, MOUTH_DROP_BAND = 0.5, 0.08

# Each eye's outer corner (face_topology.EYE_CORNERS), the eye distance's ends.
_OUTER_EYE_CORNERS = tuple(outer for outer, _ in face_topology.EYE_CORNERS)


@functools.cache
def regions() -> dict[str, np.ndarray]:
  """{region: landmark indices}: each eye (its contour), each mouth corner (the lip points
  within a quarter of the mouth's width of it, in the canonical face) and the jaw (the face
  oval below the mouth corners)."""
  canonical = face_topology.canonical_landmarks()[:, :2]
  lips = np.union1d(face_topology.LIPS_OUTER, face_topology.LIPS_INNER)
  corners = [canonical[index] for index in face_topology.MOUTH_CORNERS]
  mouth_width = np.linalg.norm(corners[1] - corners[0])
  near = [
    lips[np.linalg.norm(canonical[lips] - corner, axis=-1) < 0.25 * mouth_width]
    for corner in corners
  ]
  below = canonical[face_topology.FACE_OVAL, 1] > max(corner[1] for corner in corners)
  return {
    'right_eye': np.asarray(face_topology.RIGHT_EYE),
    'left_eye': np.asarray(face_topology.LEFT_EYE),
    'right_mouth_corner': near[0],
    'left_mouth_corner': near[1],
    'jaw': np.asarray(face_topology.FACE_OVAL)[below],
  }


# The regions each edit is meant to change (the others should stay as they were).
TARGETS = {
  'wink_right': ('right_eye',),
  'wink_left': ('left_eye',),
  'smile_right': ('right_mouth_corner',),
  'smile_left': ('left_mouth_corner',),
  'mouth_open': ('jaw', 'right_mouth_corner', 'left_mouth_corner'),
}


def _face_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(across, down) unit vectors of a face (N, 2): from its right eye to its left, and from the
  eyes towards the mouth (whatever the head's roll)."""
  eyes = [points[face_topology.RIGHT_EYE].mean(0), points[face_topology.LEFT_EYE].mean(0)]
  across = eyes[1] - eyes[0]
  across = across / max(float(np.linalg.norm(across)), 1e-9)
  down = np.array([-across[1], across[0]])
  mouth = points[list(face_topology.MOUTH_CORNERS)].mean(0)
  if np.dot(mouth - (eyes[0] + eyes[1]) / 2, down) < 0:
    down = -down
  return across, down


def edit(landmarks: np.ndarray, name: str) -> np.ndarray:
  """The (N, 3) landmarks (N >= 468, normalised) with expression `name` (EDITS); z unchanged."""
  if name not in EDITS:
    raise ValueError(f'Unknown expression {name!r}; use one of {", ".join(EDITS)}.')
  out = np.array(landmarks, np.float32, copy=True)
  points = out[:, :2].astype(np.float64)
  across, down = _face_axes(points[: face_topology.NUM_MESH_LANDMARKS])
  corners = [points[index] for index in face_topology.MOUTH_CORNERS]
  mouth_width = float(np.linalg.norm(corners[1] - corners[0]))
  moved = points.copy()
  if name.startswith('wink'):
    eye = 0 if name == 'wink_right' else 1
    upper = face_topology.UPPER_LIDS[7 * eye : 7 * eye + 7]
    lower = face_topology.LOWER_LIDS[7 * eye : 7 * eye + 7]
    outer, inner = face_topology.EYE_CORNERS[eye]
    eye_width = float(np.linalg.norm(points[outer] - points[inner]))
    moved[upper] = points[lower] - WINK_GAP * eye_width * down
  elif name.startswith('smile'):
    side = 0 if name == 'smile_right' else 1
    corner = corners[side]
    outward = corner - (corners[0] + corners[1]) / 2
    outward = outward / max(float(np.linalg.norm(outward)), 1e-9)
    shift = mouth_width * (SMILE_OUT * outward - SMILE_UP * down)
    mesh = slice(0, face_topology.NUM_MESH_LANDMARKS)
    distance = np.linalg.norm(points[mesh] - corner, axis=-1) / mouth_width
    weight = np.exp(-0.5 * (distance / SMILE_RADIUS) ** 2)
    weight[np.asarray(face_topology.STABLE)] = 0.0  # The cheekbones stay with the skull.
    moved[mesh] += weight[:, None] * shift
  else:  # mouth_open
    mesh = slice(0, face_topology.NUM_MESH_LANDMARKS)
    below = (points[mesh] - (corners[0] + corners[1]) / 2) @ down / mouth_width
    drop = np.clip(below / MOUTH_DROP_BAND, 0.0, 1.0)
    # The upper lip stays with the skull, however low its middle hangs between the corners; the
    # lower lip drops whole (its inner edge sits barely below the corners of a closed mouth).
    drop[face_topology.UPPER_LIP] = 0.0
    drop[np.setdiff1d(face_topology.LOWER_LIP, _CORNER_POINTS)] = 1.0
    moved[mesh] += (MOUTH_DROP * mouth_width * drop)[:, None] * down
  out[:, :2] = moved
  return out


# The mouth's corners on the outer and inner lip contours (each contour starts at one corner and
# reaches the other halfway): they stay where a mouth opens.
_CORNER_POINTS = np.array(
  [
    *face_topology.MOUTH_CORNERS,
    face_topology.LIPS_INNER[0],
    face_topology.LIPS_INNER[len(face_topology.LIPS_INNER) // 2],
  ]
)


def region_errors(found: np.ndarray, wanted: np.ndarray) -> dict[str, float]:
  """{region: error} of the landmarks `found` (N, 3) on an output against the `wanted` ones
  (N, 3): the mean 2D distance over the region's points once the similarity fitted on the stable
  landmarks maps found onto wanted, in eye distances of the wanted face."""
  # The regions and the stable landmarks are all mesh points (the irises are not used).
  found = np.asarray(found, np.float32)[None, : face_topology.NUM_MESH_LANDMARKS]
  wanted = np.asarray(wanted, np.float32)[None, : face_topology.NUM_MESH_LANDMARKS]
  aligned = np.asarray(metrics.pose_aligned(found, wanted, face_topology.STABLE))[0, :, :2]
  target = wanted[0, :, :2]
  right, left = (target[index] for index in _OUTER_EYE_CORNERS)
  eye_distance = max(float(np.linalg.norm(right - left)), 1e-9)
  distance = np.linalg.norm(aligned - target, axis=-1) / eye_distance
  return {name: float(distance[indices].mean()) for name, indices in regions().items()}


def summarise(errors: dict[str, list[dict[str, float]]], sizes: dict[str, list[dict[str, float]]]):
  """The flat metrics of per-pair region errors and edit sizes, {edit: [{region: value}]}:

  expression_error_<region>: mean over every edit and pair;
  expression_<edit>_<region>: the error of one edit;
  expression_<edit>_size_<region>: the edit's size there (the unedited output's error);
  expression_<edit>_reproduced: 1 - error / size over the edit's own regions (TARGETS): 0 when
  the edit is ignored, < 0 when it is wrong the other way, nearing 1 when it is shown (the
  landmarks' own noise keeps it below); None for an edit without any pair.
  """
  values: dict[str, float] = {}
  for region in regions():
    every = [pair[region] for pairs in errors.values() for pair in pairs]
    if every:
      values[f'expression_error_{region}'] = float(np.mean(every))
  for name, pairs in errors.items():
    if not pairs:
      values[f'expression_{name}_reproduced'] = None
      continue
    for region in regions():
      values[f'expression_{name}_{region}'] = float(np.mean([pair[region] for pair in pairs]))
      values[f'expression_{name}_size_{region}'] = float(
        np.mean([pair[region] for pair in sizes[name]])
      )
    error = np.mean([values[f'expression_{name}_{region}'] for region in TARGETS[name]])
    size = np.mean([values[f'expression_{name}_size_{region}'] for region in TARGETS[name]])
    values[f'expression_{name}_reproduced'] = float(1.0 - error / max(size, 1e-9))
  return values
