"""Evaluation of a trained generator with the community's reenactment protocol.

The command is `python -m reenact_jax.evaluate`; training calls `evaluate` every
config.train.eval_every steps.

Same identity: for every clip of the split, the source is its first frame and the driving
frames are all its frames, so each output has a ground truth: L1, PSNR, SSIM, AKD (landmark
distance in pixels, landmarks found by the project's face mesh on output and ground truth),
head-pose and expression error, and, when weights are configured, LPIPS and identity distance.
Cross identity (--cross-identity): the driving frames come from a clip of another identity;
there is no ground truth, so the measures are head-pose and expression error between output and
driving frame (landmarks found on both) and identity distance to the source.

Writes WORKDIR/eval/<step>.json (<step>_cross.json), logs TensorBoard scalars eval/<metric>
(eval_cross/<metric>) and prints the same result as one JSON line on stdout. A metric that could
not be computed is null and listed under 'skipped' with the reason.
"""

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from tensorboardX import SummaryWriter

from reenact_jax import (
  crops,
  expressions,
  face,
  face_topology,
  inference,
  input_pipeline,
  lpips,
  media,
  metrics,
)
from reenact_jax import workdir as workdir_lib
from reenact_jax.records import Clip


class EvaluationError(ValueError):
  """Input the evaluation cannot run on (named in the message with what to do)."""


@dataclasses.dataclass(frozen=True)
class Skip:
  """A metric that was not computed, and why (reported under 'skipped')."""

  reason: str


@dataclasses.dataclass
class Rendered:
  """One batch of evaluation pairs after rendering, host arrays, (B, H, W, 3) in [0, 1].

  'driving' is the ground truth in the same-identity protocol and the driving frame of another
  person in the cross-identity one.
  """

  source: np.ndarray
  driving: np.ndarray
  output: np.ndarray


def _to_uint8(images: np.ndarray) -> np.ndarray:
  return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _mean(values: list[np.ndarray]) -> float:
  return float(np.mean(np.concatenate(values))) if values else math.nan


# ----------------------------------------------------------------------------------- evaluators
# Rendering is the expensive part, so every evaluator sees each rendered batch once through
# `update`, then `run` yields its (name, value) results; a value may be a Skip.


class ImageEvaluator:
  """L1, PSNR (dB), SSIM between output and ground truth, averaged over frames."""

  def __init__(self):
    self._values = {'l1': [], 'psnr': [], 'ssim': []}
    self._measure = _image_measures

  def update(self, batch: Rendered) -> None:
    device = jax.local_devices()[0]
    output, truth = jax.device_put((batch.output, batch.driving), device)
    for name, value in jax.device_get(self._measure(output, truth)).items():
      self._values[name].append(np.asarray(value, np.float64))

  def run(self) -> Iterator[tuple[str, Any]]:
    for name, values in self._values.items():
      yield name, _mean(values)


@jax.jit
def _image_measures(output: jax.Array, truth: jax.Array) -> dict[str, jax.Array]:
  return {
    'l1': metrics.l1(output, truth),
    'psnr': metrics.psnr(output, truth),
    'ssim': metrics.ssim(output, truth),
  }


class LandmarkEvaluator:
  """AKD (same identity), head-pose and expression error, from landmarks found on both images.

  The face mesh (reenact_jax.face.FaceLandmarker) runs on the output and on the driving frame at
  the frame resolution, each frame on its own (no tracking between frames, so one frame's
  failure cannot hide in the next). Pairs where the model finds no face in the output (or in the
  driving frame) are counted and reported; the averages are over the pairs where both have one.

  Yields: akd (pixels; only with ground truth), pose_error (degrees, mean of |Δyaw|, |Δpitch|,
  |Δroll|) and its three parts, expression_error (normalised units, after removing the head pose
  by a similarity fitted on the stable landmarks), landmark_frames (pairs measured),
  no_face_output and no_face_driving (pair counts), face_found_fraction (of the output frames),
  and the motion report: correlation_<measure> (Pearson, over the measured pairs, of
  metrics.face_measures of output and driving frame: mouth and eye opening, gaze, yaw, pitch,
  roll) and gaze_error (metrics.gaze_error: how far the output's gaze moves from the driver's).
  """

  def __init__(self, *, with_ground_truth: bool, landmarker=None):
    self._landmarker = landmarker if landmarker is not None else face.FaceLandmarker()
    self._with_ground_truth = with_ground_truth
    self._canonical = face_topology.canonical_landmarks()
    self._stable = np.asarray(face_topology.STABLE)
    self._akd, self._pose, self._expression = [], [], []
    self._output_landmarks, self._driving_landmarks = [], []
    self._no_face_output = self._no_face_driving = self._total = 0

  def _find(self, image: np.ndarray) -> np.ndarray | None:
    self._landmarker.reset()
    return self._landmarker(image)

  def update(self, batch: Rendered) -> None:
    height, width = batch.output.shape[1:3]
    for output, driving in zip(_to_uint8(batch.output), _to_uint8(batch.driving), strict=True):
      self._total += 1
      found_output = self._find(output)
      found_driving = self._find(driving)
      self._no_face_output += found_output is None
      self._no_face_driving += found_driving is None
      if found_output is None or found_driving is None:
        continue
      found_output, found_driving = found_output[None], found_driving[None]
      if self._with_ground_truth:
        self._akd.append(metrics.akd(found_output, found_driving))
      frame_box = (0, 0, width)  # Evaluation frames are square crops.
      output_norm = crops.normalise_landmarks(found_output, frame_box)
      driving_norm = crops.normalise_landmarks(found_driving, frame_box)
      self._pose.append(
        metrics.pose_error(output_norm, driving_norm, self._canonical, self._stable)
      )
      self._expression.append(metrics.expression_error(output_norm, driving_norm, self._stable))
      self._output_landmarks.append(output_norm[0])
      self._driving_landmarks.append(driving_norm[0])

  def run(self) -> Iterator[tuple[str, Any]]:
    measured = len(self._pose)
    yield 'landmark_frames', measured
    yield 'no_face_output', self._no_face_output
    yield 'no_face_driving', self._no_face_driving
    if self._total:
      yield 'face_found_fraction', 1.0 - self._no_face_output / self._total
    if measured >= 3:
      output = metrics.face_measures(
        np.stack(self._output_landmarks), self._canonical, self._stable
      )
      driving = metrics.face_measures(
        np.stack(self._driving_landmarks), self._canonical, self._stable
      )
      for name in metrics.MOTION_MEASURES:
        value = metrics.pearson(driving[name], output[name])
        yield f'correlation_{name}', Skip('constant series') if math.isnan(value) else value
      yield 'gaze_error', metrics.gaze_error(driving, output)
    names = (['akd'] if self._with_ground_truth else []) + [
      'pose_error',
      'pose_error_yaw',
      'pose_error_pitch',
      'pose_error_roll',
      'expression_error',
    ]
    if not measured:
      reason = Skip(
        f'the face mesh found no face in {self._no_face_output} of {self._total} output frames '
        f'and in {self._no_face_driving} of {self._total} driving frames, leaving no pair to '
        'measure (expected on tiny synthetic frames; real faces need >= ~64 px).'
      )
      for name in names:
        yield name, reason
      return
    if self._with_ground_truth:
      yield 'akd', _mean(self._akd)
    pose = np.concatenate(self._pose)  # (F, 3)
    yield 'pose_error', float(pose.mean())
    for axis, name in enumerate(('yaw', 'pitch', 'roll')):
      yield f'pose_error_{name}', float(pose[:, axis].mean())
    yield 'expression_error', _mean(self._expression)


class LpipsEvaluator:
  """LPIPS-VGG16 distance between output and ground truth, averaged over frames."""

  def __init__(self, distance_fn: Callable[[jax.Array, jax.Array], jax.Array]):
    self._distance = distance_fn
    self._values = []

  def update(self, batch: Rendered) -> None:
    device = jax.local_devices()[0]
    output, truth = jax.device_put((batch.output, batch.driving), device)
    self._values.append(np.asarray(jax.device_get(self._distance(output, truth)), np.float64))

  def run(self) -> Iterator[tuple[str, Any]]:
    yield 'lpips', _mean(self._values)


class IdentityEvaluator:
  """Face-descriptor cosine distance: output vs ground truth (same identity) or vs the source.

  `embed` maps one RGB uint8 image (H, W, 3) to a descriptor (D,), or None when it finds no face.
  """

  def __init__(self, embed: Callable[[np.ndarray], np.ndarray | None], *, to_source: bool):
    self._embed = embed
    self._to_source = to_source
    self._values = []
    self._no_face = self._total = 0

  def update(self, batch: Rendered) -> None:
    references = batch.source if self._to_source else batch.driving
    for output, reference in zip(_to_uint8(batch.output), _to_uint8(references), strict=True):
      self._total += 1
      a, b = self._embed(output), self._embed(reference)
      if a is None or b is None:
        self._no_face += 1
        continue
      self._values.append(metrics.cosine_distance(a[None], b[None]))

  def run(self) -> Iterator[tuple[str, Any]]:
    yield 'identity_no_face', self._no_face
    if not self._values:
      yield 'identity_distance', Skip(f'no face descriptor on {self._no_face} of {self._total}.')
    else:
      yield 'identity_distance', _mean(self._values)


# --------------------------------------------------------------------------- optional models


@functools.lru_cache(maxsize=4)
def _lpips_fn(path: str):
  return lpips.make_distance_fn(path)


def make_evaluators(
  config: ml_collections.ConfigDict, *, cross_identity: bool, landmarker=None
) -> tuple[list[Any], dict[str, str]]:
  """The evaluators the config allows, and {metric: reason} for the ones it does not."""
  ev = config.eval
  evaluators: list[Any] = []
  skipped: dict[str, str] = {}
  if not cross_identity:
    evaluators.append(ImageEvaluator())
  evaluators.append(LandmarkEvaluator(with_ground_truth=not cross_identity, landmarker=landmarker))

  if cross_identity:
    skipped['lpips'] = 'needs a ground truth; the cross-identity protocol has none'
  elif not ev.lpips_weights_path:
    skipped['lpips'] = 'no weights: set config.eval.lpips_weights_path or --lpips_weights'
  else:
    try:
      evaluators.append(LpipsEvaluator(_lpips_fn(ev.lpips_weights_path)))
    except lpips.LpipsError as error:
      raise EvaluationError(str(error)) from error

  if not ev.identity_weights_path:
    skipped['identity_distance'] = (
      'no face descriptor model: set config.eval.identity_weights_path or --identity_weights '
      "(dlib's dlib_face_recognition_resnet_model_v1.dat)"
    )
  else:
    try:
      embed = face.dlib_identity_embedder(ev.identity_weights_path)
      evaluators.append(IdentityEvaluator(embed, to_source=cross_identity))
    except face.IdentityModelError as error:
      skipped['identity_distance'] = str(error)
  return evaluators, skipped


# ------------------------------------------------------------------------------- pairs, render


def evaluation_pairs(
  clips: Sequence[Clip], *, cross_identity: bool, max_clips: int
) -> Iterator[tuple[int, int]]:
  """(source frame index, driving frame index) pairs of the protocol, clip by clip.

  Source: the first frame of each of the first `max_clips` clips (0: all). Driving: every frame
  of the same clip, or (cross identity) of the next clip, cyclically, of another identity.
  """
  if not clips:
    raise EvaluationError('the split has no clips to evaluate.')
  chosen = clips[:max_clips] if max_clips else clips
  for position, clip in enumerate(chosen):
    driving = clip
    if cross_identity:
      following = (clips[(position + offset) % len(clips)] for offset in range(1, len(clips)))
      driving = next((c for c in following if c.identity != clip.identity), None)
      if driving is None:
        raise EvaluationError(
          f'cross-identity evaluation needs clips of at least two identities; the split has '
          f'only {clip.identity!r}.'
        )
    for frame in range(driving.num_frames):
      yield clip.first, driving.first + frame


def source_views(frames, clip: Clip, count: int) -> list[int]:
  """Frame indices of `count` more views of a clip's person besides its first frame: greedily,
  the frame whose head pose (metrics.head_pose_angles, degrees) is farthest from the views
  already chosen, so that the views show the face from the most different sides."""
  if count < 1:
    return []
  if clip.num_frames <= count:
    raise EvaluationError(
      f'clip {clip.name!r} has {clip.num_frames} frames: too few for {count + 1} source views '
      'and a driving frame; use fewer --num_sources.'
    )
  landmarks = np.stack([frames.frame(clip.first + i)['landmarks'] for i in range(clip.num_frames)])
  poses = metrics.head_pose_angles(
    landmarks, face_topology.canonical_landmarks()[: landmarks.shape[1]], face_topology.STABLE
  )
  return [clip.first + i for i in metrics.most_different_poses(poses, 0, count)]


def view_pairs(
  frames, *, num_sources: int, max_clips: int
) -> Iterator[tuple[int, int, tuple[int, ...]]]:
  """(source frame, driving frame, extra source frames) of the several-source protocol: the
  same-identity protocol (evaluation_pairs) with source_views' extra views of each clip, whose
  own frames are left out of the driving frames (they would be copies)."""
  if not frames.clips:
    raise EvaluationError('the split has no clips to evaluate.')
  for clip in frames.clips[:max_clips] if max_clips else frames.clips:
    extras = tuple(source_views(frames, clip, num_sources - 1))
    for frame in range(clip.first, clip.first + clip.num_frames):
      if frame not in extras:
        yield clip.first, frame, extras


def _placement(params) -> tuple[Any, Any, Any]:
  """(params on device, where to put batches, the output sharding).

  Parameters already on a mesh (training) stay where they are; batches and outputs are
  replicated on that mesh, so every process can read the whole output. Host parameters
  (a loaded checkpoint) go to the first local device.
  """
  leaves = jax.tree.leaves(params)  # None with the prior alone, which has no parameters.
  sharding = getattr(leaves[0], 'sharding', None) if leaves else None
  if isinstance(sharding, jax.sharding.NamedSharding):
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return params, replicated, replicated
  device = jax.local_devices()[0]
  return jax.device_put(params, device), device, None


# ------------------------------------------------------------------------------------ evaluate


def evaluate(
  config: ml_collections.ConfigDict,
  params: Any,
  generator: Any,
  *,
  split: str,
  cross_identity: bool = False,
  max_clips: int = 0,
  workdir: str | None = None,
  step: int = 0,
  landmarker=None,
  prior_only: bool = False,
  num_sources: int = 1,
) -> dict[str, Any]:
  """Runs the protocol on `split` with generator `params` (EMA); returns the result dict.

  Args:
    config: the run's config (data source, image size, config.eval).
    params: generator parameters (host numpy, or device arrays; sharded ones are used in place).
    generator: the Linen generator (models.make_generator).
    split: data split, e.g. 'test'.
    cross_identity: the cross-identity protocol instead of same-identity reconstruction.
    max_clips: evaluate the first N clips only (0: all).
    workdir: when given, writes WORKDIR/eval/<step>[_cross].json and TensorBoard scalars.
    step: training step of `params`, for the file name and TensorBoard.
    landmarker: a face.FaceLandmarker to reuse (built when None).
    prior_only: render with the generator's geometric prior alone (models.prior_render; the
      parameters are not used): the baseline.
    num_sources: source views per clip (same identity only): the first frame and
      num_sources - 1 more (source_views; their frames are not driven). The metrics are those
      of the fused views; 'one_source' has L1, PSNR and SSIM of the first frame alone on the
      same driving frames, and 'source_frames' each clip's views.

  Returns:
    {'step', 'split', 'cross_identity', 'num_clips', 'num_frames', 'num_sources', 'metrics':
    {name: value or None}, 'skipped': {name: reason}} (and with several sources 'one_source'
    and 'source_frames').
  """
  if num_sources < 1:
    raise EvaluationError(f'--num_sources={num_sources}; it must be >= 1.')
  if num_sources > 1 and cross_identity:
    raise EvaluationError(
      '--num_sources compares several source views with one on the ground truth; the '
      'cross-identity protocol has none. Use the same-identity protocol.'
    )
  frames, batch_size = _split_frames(config, split)
  evaluators, skipped = make_evaluators(
    config, cross_identity=cross_identity, landmarker=landmarker
  )
  render, placement = _renderer(generator, params, prior_only)

  if num_sources > 1:
    pairs = list(view_pairs(frames, num_sources=num_sources, max_clips=max_clips))
  else:
    pairs = evaluation_pairs(frames.clips, cross_identity=cross_identity, max_clips=max_clips)
  views: dict[int, dict[str, np.ndarray]] = {}

  def example_of(source, pair, *, with_views: bool = True):
    extras = []
    if with_views and len(pair) > 2:
      if set(views) != set(pair[2]):  # Views change clip by clip: keep one clip's.
        views.clear()
        views.update({index: frames.frame(index) for index in pair[2]})
      extras = [views[index] for index in pair[2]]
    return input_pipeline.pair_to_example(source, frames.frame(pair[1]), extras)

  num_frames = 0
  for batch, output in _rendered(
    frames, pairs, example_of, batch_size=batch_size, render=render, placement=placement
  ):
    rendered = Rendered(source=batch['source'], driving=batch['driving'], output=output)
    for evaluator in evaluators:
      evaluator.update(rendered)
    num_frames += len(output)
  one_source = None
  if num_sources > 1:
    # The same driving frames from the first frame alone: the comparison the views must win.
    one_source = ImageEvaluator()
    for batch, output in _rendered(
      frames,
      iter(pairs),
      functools.partial(example_of, with_views=False),
      batch_size=batch_size,
      render=render,
      placement=placement,
    ):
      one_source.update(Rendered(source=batch['source'], driving=batch['driving'], output=output))

  values: dict[str, Any] = {}
  for evaluator in evaluators:
    for name, value in evaluator.run():
      if isinstance(value, Skip):
        skipped[name] = value.reason
        value = None
      elif isinstance(value, float) and not math.isfinite(value):
        logging.warning('eval: %s is %s', name, value)
        skipped[name] = f'not finite ({value})'
        value = None
      values[name] = value
  for name in skipped:
    values.setdefault(name, None)

  return _result(
    frames,
    step=step,
    prior_only=prior_only,
    split=split,
    cross_identity=cross_identity,
    max_clips=max_clips,
    num_frames=num_frames,
    values=values,
    skipped=skipped,
    workdir=workdir,
    extra=None
    if one_source is None
    else {
      'one_source': dict(one_source.run()),
      'source_frames': {clip_first: list(extras) for clip_first, _, extras in pairs if extras},
    },
    num_sources=num_sources,
  )


def _split_frames(config: ml_collections.ConfigDict, split: str):
  """(the split's frame source, config.eval.batch_size), errors as EvaluationError."""
  try:
    frames = input_pipeline.make_frame_source(config, split)
  except (FileNotFoundError, ValueError) as error:
    raise EvaluationError(f'cannot read the {split!r} split: {error}') from error
  batch_size = int(config.eval.batch_size)
  if batch_size < 1:
    raise EvaluationError(f'config.eval.batch_size must be >= 1, got {batch_size}.')
  return frames, batch_size


def _renderer(generator: Any, params: Any, prior_only: bool):
  """(render: batch -> outputs, where to put batches) for `params` placed by _placement."""
  params, placement, out_sharding = _placement(params)
  render = inference.render_fn(generator, out_sharding, prior_only=prior_only)
  return functools.partial(render, params), placement


def _result(
  frames,
  *,
  step: int,
  prior_only: bool,
  split: str,
  cross_identity: bool,
  max_clips: int,
  num_frames: int,
  values: dict[str, Any],
  skipped: dict[str, str],
  workdir: str | None,
  expression_slice: bool = False,
  num_sources: int = 1,
  extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """A protocol's result dict (see evaluate; 'expressions': True for evaluate_expressions),
  written to WORKDIR/eval by process 0 when `workdir` is given."""
  result = {
    'step': int(step),
    'prior_only': bool(prior_only),
    'split': split,
    'cross_identity': bool(cross_identity),
    'num_clips': min(len(frames.clips), max_clips) if max_clips else len(frames.clips),
    'num_frames': num_frames,
    'num_sources': int(num_sources),
    'metrics': values,
    'skipped': skipped,
    **(extra or {}),
  }
  if expression_slice:
    result['expressions'] = True
  if workdir is not None and jax.process_index() == 0:
    write_result(result, workdir)
  return result


def _rendered(
  frames,
  pairs: Iterator[tuple],
  example_of: Callable[[dict[str, np.ndarray], tuple], dict[str, np.ndarray]],
  *,
  batch_size: int,
  render: Callable[[dict[str, Any]], dict[str, jax.Array]],
  placement: Any,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
  """(batch, output) host arrays for `pairs` (each starting with its source frame's index), in
  batches of `batch_size`: example_of(source frame, pair) makes each example; the last batch is
  padded to the full size (one compiled shape) and yielded without its padding."""
  source_cache: dict[int, dict[str, np.ndarray]] = {}
  for chunk in media.batched(pairs, batch_size):
    valid = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - valid)
    examples = []
    for pair in chunk:
      if pair[0] not in source_cache:
        source_cache.clear()  # Sources change clip by clip: keep one.
        source_cache[pair[0]] = frames.frame(pair[0])
      examples.append(example_of(source_cache[pair[0]], pair))
    batch = jax.tree.map(lambda *items: np.stack(items), *examples)
    output = render(jax.device_put(batch, placement))['output']
    output = np.asarray(jax.device_get(output), np.float32)
    yield {name: array[:valid] for name, array in batch.items()}, output[:valid]


# ------------------------------------------------------------------------ expressions


def expression_pairs(
  clips: Sequence[Clip], *, max_clips: int, frames_per_clip: int
) -> Iterator[tuple[int, int, str]]:
  """(source frame index, driving frame index, edit) of the expressions protocol: per clip its
  first frame as the source, `frames_per_clip` frames spread over the clip (the first one
  included) as driving frames, each as it is (edit '') and with every edit of
  expressions.EDITS."""
  if not clips:
    raise EvaluationError('the split has no clips to evaluate.')
  for clip in clips[:max_clips] if max_clips else clips:
    count = min(frames_per_clip, clip.num_frames)
    for frame in np.linspace(0, clip.num_frames - 1, count).round().astype(int):
      for name in ('', *expressions.EDITS):
        yield clip.first, clip.first + int(frame), name


def evaluate_expressions(
  config: ml_collections.ConfigDict,
  params: Any,
  generator: Any,
  *,
  split: str,
  max_clips: int = 0,
  frames_per_clip: int = 4,
  workdir: str | None = None,
  step: int = 0,
  landmarker=None,
  prior_only: bool = False,
) -> dict[str, Any]:
  """Winks, one-sided smiles and a wide-open mouth (expressions.EDITS) made by editing the
  landmarks of real frames of `split` (expression_pairs), scored region by region.

  Each driving frame drives the clip's first frame once as it is and once per edit. The face
  mesh finds the outputs' landmarks; expressions.region_errors scores each against the edited
  landmarks: the edited output's error, and the unedited output's (the error of ignoring the
  edit, measured the same way, so landmark noise and what the model gets wrong anyway are in
  both). expressions.summarise gives the error per region and per edit and the fraction of the
  edit reproduced. Arguments and result as `evaluate`; 'num_frames' counts the outputs, the
  result has 'expressions': True.
  """
  if int(config.model.num_landmarks) < face_topology.NUM_MESH_LANDMARKS:
    raise EvaluationError(
      f'--expressions edits the 468-point face mesh; the run has '
      f'{config.model.num_landmarks} landmarks.'
    )
  frames, batch_size = _split_frames(config, split)
  landmarker = landmarker if landmarker is not None else face.FaceLandmarker()
  render, placement = _renderer(generator, params, prior_only)
  driving_cache: dict[int, dict[str, np.ndarray]] = {}

  def example_of(source, pair):
    if pair[1] not in driving_cache:  # Each driving frame is read once for its 6 outputs.
      driving_cache.clear()
      driving_cache[pair[1]] = frames.frame(pair[1])
    driving = driving_cache[pair[1]]
    example = input_pipeline.pair_to_example(source, driving)
    if pair[2]:
      example['driving_landmarks'] = expressions.edit(driving['landmarks'], pair[2])
    return example

  pairs = list(expression_pairs(frames.clips, max_clips=max_clips, frames_per_clip=frames_per_clip))
  # (driving frame, edit) -> (landmarks found on the output or None, the landmarks it was given)
  found: dict[tuple[int, str], tuple[np.ndarray | None, np.ndarray]] = {}
  done = 0
  for batch, output in _rendered(
    frames,
    iter(pairs),
    example_of,
    batch_size=batch_size,
    render=render,
    placement=placement,
  ):
    for image, given in zip(_to_uint8(output), batch['driving_landmarks'], strict=True):
      landmarker.reset()
      points = landmarker(image)
      _, driving, name = pairs[done]
      if points is not None:
        points = crops.normalise_landmarks(points, (0, 0, image.shape[1]))
      found[driving, name] = (points, given)
      done += 1

  errors = {name: [] for name in expressions.EDITS}
  sizes = {name: [] for name in expressions.EDITS}
  for (driving, name), (points, wanted) in found.items():
    unedited = found[driving, ''][0]
    if not name or points is None or unedited is None:
      continue
    errors[name].append(expressions.region_errors(points, wanted))
    sizes[name].append(expressions.region_errors(unedited, wanted))
  values: dict[str, Any] = expressions.summarise(errors, sizes)
  no_face = sum(points is None for points, _ in found.values())
  values['face_found_fraction'] = 1.0 - no_face / max(done, 1)
  skipped = {}
  reason = (
    f'the face mesh found no face in {no_face} of the {done} outputs, leaving no pair of an '
    'edited and an unedited output to measure'
  )
  for name in expressions.EDITS:
    if not errors[name]:
      skipped[f'expression_{name}_reproduced'] = f'{reason} with {name}.'
  if not any(errors.values()):
    skipped['expression_error'] = f'{reason}.'
  return _result(
    frames,
    step=step,
    prior_only=prior_only,
    split=split,
    cross_identity=False,
    expression_slice=True,
    max_clips=max_clips,
    num_frames=done,
    values=values,
    skipped=skipped,
    workdir=workdir,
  )


def write_result(result: dict[str, Any], workdir: str) -> str:
  """WORKDIR/eval/<step>[_cross|_expressions][_<K>sources][_prior].json and TensorBoard scalars
  eval[_cross|_expressions][_<K>sources][_prior]/<metric>."""
  suffix = (
    ('_cross' if result['cross_identity'] else '')
    + ('_expressions' if result.get('expressions') else '')
    + (f'_{result["num_sources"]}sources' if result.get('num_sources', 1) > 1 else '')
    + ('_prior' if result.get('prior_only') else '')
  )
  directory = os.path.join(workdir, 'eval')
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f'{result["step"]}{suffix}.json')
  with open(path, 'w') as file:
    json.dump(result, file, indent=2, sort_keys=True)
    file.write('\n')
  writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
  try:
    for name, value in result['metrics'].items():
      if value is not None:
        writer.add_scalar(f'eval{suffix}/{name}', value, result['step'])
  finally:
    writer.close()
  return path


def evaluate_workdir(
  workdir: str,
  *,
  split: str | None = None,
  cross_identity: bool = False,
  step: int | None = None,
  max_clips: int | None = None,
  lpips_weights: str | None = None,
  identity_weights: str | None = None,
  prior_only: bool = False,
  expressions: bool = False,
  num_sources: int = 1,
) -> dict[str, Any]:
  """Loads the run's EMA generator (newest or `step`) and evaluates it (prior_only: its geometric
  prior alone, the baseline; expressions: evaluate_expressions instead of the reenactment
  protocol; num_sources: several source views, see evaluate); None keeps the config's."""
  if expressions and cross_identity:
    raise EvaluationError('--expressions and --cross_identity are two protocols; choose one.')
  if expressions and num_sources > 1:
    raise EvaluationError('--expressions drives one source image; leave out --num_sources.')
  loaded = inference.load_generator(workdir, step)
  config = loaded.config
  with config.unlocked():
    for key, value in (
      ('lpips_weights_path', lpips_weights),
      ('identity_weights_path', identity_weights),
    ):
      if value is not None:
        config.eval[key] = value
  # A gs:// run directory gets the report through a local directory (object stores cannot
  # append to the TensorBoard file).
  log_dir = workdir_lib.LogDir(workdir) if workdir_lib.is_remote(workdir) else None
  common = dict(
    split=split or config.eval.split,
    max_clips=config.eval.max_clips if max_clips is None else max_clips,
    workdir=str(log_dir.local) if log_dir else workdir,
    step=loaded.step,
    prior_only=prior_only,
  )
  if expressions:
    result = evaluate_expressions(config, loaded.params, loaded.generator, **common)
  else:
    result = evaluate(
      config,
      loaded.params,
      loaded.generator,
      cross_identity=cross_identity,
      num_sources=num_sources,
      **common,
    )
  if log_dir:
    log_dir.sync()
  return result
