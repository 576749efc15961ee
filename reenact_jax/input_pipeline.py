"""grain input pipeline: frames -> (source, driving) pairs -> augmented, batched, per process.

Every pair is a pure function of (seed, pair index): the index picks an identity uniformly
(identity-balanced sampling), a clip of it, and two frames of the clip; augmentation draws from
an RNG seeded by the same index. So the data order depends only on the seed and the position in
the stream, worker processes do not change it, and a restored iterator state continues it
exactly. Each process reads only its own slice of the index stream (ShardByJaxProcess).
"""

import dataclasses
import logging
import pathlib
import resource
import time
from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from reenact_jax import face_topology

# Virtual length of the infinite pair stream; the trainer stops long before it ends.
STREAM_LENGTH = 10**12


@dataclasses.dataclass(frozen=True)
class Clip:
  identity: str
  name: str
  first: int  # Index of the clip's first frame in its frame source.
  num_frames: int


class FrameSource(Protocol):
  """Random access to prepared frames, grouped into clips."""

  clips: Sequence[Clip]

  def frame(self, index: int) -> dict[str, np.ndarray]:
    """'image' (H, W, 3) float32 [0, 1], 'landmarks' (N, 3) float32, 'mask' (H, W, 1)."""
    ...


class SyntheticFrames:
  """Procedural talking-head clips (reenact_jax.synthetic), one identity per clip."""

  def __init__(self, *, num_clips: int, frames_per_clip: int, image_size: int, seed: int):
    self.clips = [
      Clip(f'synthetic{c:05d}', f'clip{c:05d}', c * frames_per_clip, frames_per_clip)
      for c in range(num_clips)
    ]
    self._frames_per_clip = frames_per_clip
    self._image_size = image_size
    self._seed = seed

  def frame(self, index: int) -> dict[str, np.ndarray]:
    from reenact_jax import synthetic

    clip, frame = divmod(int(index), self._frames_per_clip)
    return synthetic.render_frame(
      clip,
      frame,
      image_size=self._image_size,
      num_frames=self._frames_per_clip,
      seed=self._seed,
    )


def cache_dir(data_config: ml_collections.ConfigDict) -> pathlib.Path:
  if data_config.cache_dir:
    return pathlib.Path(data_config.cache_dir)
  from data import demo

  return demo.default_cache_dir()


def make_frame_source(config: ml_collections.ConfigDict, split: str) -> FrameSource:
  """The frame source the config names ('synthetic', 'arrayrecord' or 'demo')."""
  data = config.data
  if data.source == 'synthetic':
    # The test split uses other clips (other identities) than the train split.
    seed = config.seed if split == 'train' else config.seed + 7919
    return SyntheticFrames(
      num_clips=data.synthetic_num_clips,
      frames_per_clip=data.synthetic_frames_per_clip,
      image_size=config.image_size,
      seed=seed,
    )
  if data.source in ('arrayrecord', 'demo'):
    from reenact_jax import records

    if data.source == 'demo':
      from data import demo

      directory = demo.prepared_demo_dir(cache_dir(data), resolution=config.image_size)
    elif not data.dir:
      raise ValueError(
        "config.data.source='arrayrecord' needs --config.data.dir=<folder written by "
        'python -m data.prepare>.'
      )
    else:
      directory = data.dir
    return records.RecordFrames(
      directory, split, image_size=config.image_size, skip_corrupt=data.skip_corrupt
    )
  raise ValueError(
    f"config.data.source={data.source!r} is not one of 'synthetic', 'arrayrecord', 'demo'."
  )


@dataclasses.dataclass(frozen=True)
class PseudoPairs:
  """Still portraits re-posed twice into (source, driving) pairs with known motion."""

  images: np.ndarray  # (P, S, S, 3) float32 [0, 1]
  landmarks: np.ndarray  # (P, N, 3) float32
  fraction: float
  max_rotation_deg: float
  max_scale: float
  max_translation: float
  max_deformation: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'PseudoPairs | None':
    data = config.data
    if data.pseudo_pair_fraction <= 0:
      return None
    from data import portraits

    with np.load(portraits.prepared_portraits(cache_dir(data), config.image_size)) as arrays:
      images = arrays['images'].astype(np.float32) / 255.0
      landmarks = arrays['landmarks'].astype(np.float32)
    return cls(
      images,
      landmarks,
      float(data.pseudo_pair_fraction),
      float(data.pseudo_max_rotation_deg),
      float(data.pseudo_max_scale),
      float(data.pseudo_max_translation),
      float(data.pseudo_max_deformation),
    )

  def frame(self, portrait: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from reenact_jax import synthetic

    image, landmarks, mask = synthetic.repose(
      self.images[portrait],
      self.landmarks[portrait],
      rng=rng,
      max_rotation_deg=self.max_rotation_deg,
      max_scale=self.max_scale,
      max_translation=self.max_translation,
      max_deformation=self.max_deformation,
    )
    return {'image': image, 'landmarks': landmarks, 'mask': mask}


@dataclasses.dataclass(frozen=True)
class Augmentation:
  flip: bool
  color_jitter: float
  scale_jitter: float
  translate_jitter: float

  @classmethod
  def from_config(cls, data_config: ml_collections.ConfigDict) -> 'Augmentation':
    return cls(
      flip=bool(data_config.flip),
      color_jitter=float(data_config.color_jitter),
      scale_jitter=float(data_config.scale_jitter),
      translate_jitter=float(data_config.translate_jitter),
    )


def flip_frame(frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Mirror image, mask and landmarks; landmark indices are remapped (left eye stays left eye)."""
  landmarks = frame['landmarks'][face_topology.FLIP_PERMUTATION].copy()
  landmarks[:, 0] = -landmarks[:, 0]
  return {
    'image': frame['image'][:, ::-1],
    'mask': frame['mask'][:, ::-1],
    'landmarks': landmarks,
  }


def affine_frame(
  frame: dict[str, np.ndarray], scale: float, translate: tuple[float, float]
) -> dict[str, np.ndarray]:
  """p -> scale * p + translate in normalised coordinates, applied to image, mask, landmarks.

  z is scaled with x and y so the landmarks stay a similarity transform of the original face.
  """
  height, width = frame['image'].shape[:2]
  # In pixels (continuous coordinates, 0 at the image edge): u' = s u + (1 - s + t) * W / 2.
  matrix = np.array(
    [
      [scale, 0.0, (1.0 - scale + translate[0]) * width / 2.0],
      [0.0, scale, (1.0 - scale + translate[1]) * height / 2.0],
    ],
    np.float32,
  )
  # cv2 maps pixel centres (integer coordinates); shift by half a pixel on both sides.
  half = np.array([[0.5], [0.5]], np.float32)
  matrix_cv = matrix.copy()
  matrix_cv[:, 2:] = matrix[:, 2:] + matrix[:, :2] @ half - half
  image = cv2.warpAffine(
    frame['image'],
    matrix_cv,
    (width, height),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_REFLECT,
  )
  mask = cv2.warpAffine(
    frame['mask'][..., 0],
    matrix_cv,
    (width, height),
    flags=cv2.INTER_NEAREST,
    borderMode=cv2.BORDER_CONSTANT,
  )[..., None]
  landmarks = frame['landmarks'] * scale
  landmarks[:, 0] += translate[0]
  landmarks[:, 1] += translate[1]
  return {'image': image, 'mask': mask, 'landmarks': landmarks.astype(np.float32)}


def color_jitter(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
  """Brightness, contrast and saturation scaled by factors in [1 - amount, 1 + amount].

  The readable definition; augment_pair applies the same map as one fused colour matrix.
  """
  brightness, contrast, saturation = rng.uniform(1.0 - amount, 1.0 + amount, size=3)
  image = np.asarray(image, np.float32) * np.float32(brightness)
  mean = image.mean()
  image = (image - mean) * np.float32(contrast) + mean
  grey = image.mean(axis=-1, keepdims=True)
  image = (image - grey) * np.float32(saturation) + grey
  return np.clip(image, 0.0, 1.0)


def _color_matrix(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """The (3, 4) affine colour map equal to color_jitter's three steps on `image`.

  Brightness b then contrast c about the image mean m is x -> a x + d with a = c b and
  d = (1 - c) b m; saturation s about the per-pixel grey g(x) = mean_k x_k then gives
  x -> a s x + a (1 - s) g(x) + d: one matrix a (s I + (1 - s) / 3) plus the offset d.
  """
  brightness, contrast, saturation = (float(f) for f in factors)
  mean = float(np.mean(cv2.mean(image)[:3]))
  gain = contrast * brightness
  matrix = np.full((3, 4), gain * (1.0 - saturation) / 3.0)
  matrix[np.arange(3), np.arange(3)] += gain * saturation
  matrix[:, 3] = (1.0 - contrast) * brightness * mean
  return matrix.astype(np.float32)


def _apply_color(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """(H, W, 3) float32 -> colour-jittered copy in [0, 1] (one cv2 pass plus an in-place clip)."""
  out = cv2.transform(image, _color_matrix(image, factors))
  return np.clip(out, 0.0, 1.0, out=out)


def _geometry_matrix(flip: bool, scale: float, translate, height: int, width: int) -> np.ndarray:
  """(2, 3) cv2 warpAffine matrix (pixel-index units) of p -> scale * F p + translate.

  p in normalised coordinates, F mirrors x when `flip`. In continuous pixels (0 at the image
  edge) u' = s f u + (1 - s f + t) * W / 2 with f = -1 for a flip; cv2 maps pixel centres
  (integer coordinates), so shift by half a pixel on both sides.
  """
  sx = -scale if flip else scale
  matrix = np.array(
    [
      [sx, 0.0, (1.0 - sx + translate[0]) * width / 2.0],
      [0.0, scale, (1.0 - scale + translate[1]) * height / 2.0],
    ]
  )
  matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
  return matrix.astype(np.float32)


def _transform_frame(
  frame: dict[str, np.ndarray], flip: bool, scale: float, translate, warp: bool
) -> dict[str, np.ndarray]:
  """flip_frame then affine_frame in one resampling of the image and of the mask."""
  landmarks = np.asarray(frame['landmarks'], np.float32)
  image, mask = frame['image'], frame['mask']
  if flip:
    landmarks = landmarks[face_topology.FLIP_PERMUTATION]
    landmarks[:, 0] = -landmarks[:, 0]
  if warp:
    height, width = image.shape[:2]
    matrix = _geometry_matrix(flip, scale, translate, height, width)
    image = cv2.warpAffine(
      image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    mask = cv2.warpAffine(
      mask[..., 0], matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    )[..., None]
    landmarks = landmarks * np.float32(scale)
    landmarks[:, :2] += np.asarray(translate, np.float32)
  elif flip:
    image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
  return {'image': image, 'mask': mask, 'landmarks': landmarks}


def augment_pair(
  source: dict[str, np.ndarray],
  driving: dict[str, np.ndarray],
  rng: np.random.Generator,
  augmentation: Augmentation,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The same flip, geometric and colour jitter for both frames (it adds no relative motion).

  Equal (up to interpolation rounding) to flip_frame, then affine_frame, then color_jitter with
  the same random draws, but each frame is resampled once (flip, scale and shift folded into
  one warpAffine) and jittered by one fused colour matrix, all in float32.
  """
  flip = bool(augmentation.flip and rng.random() < 0.5)
  warp = bool(augmentation.scale_jitter or augmentation.translate_jitter)
  scale, translate = 1.0, (0.0, 0.0)
  if warp:
    scale = 1.0 + rng.uniform(-augmentation.scale_jitter, augmentation.scale_jitter)
    translate = tuple(
      rng.uniform(-augmentation.translate_jitter, augmentation.translate_jitter, size=2) * 2.0
    )
  source = _transform_frame(source, flip, scale, translate, warp)
  driving = _transform_frame(driving, flip, scale, translate, warp)
  if augmentation.color_jitter:
    amount = augmentation.color_jitter
    # Same factors for both frames; each is jittered about its own mean.
    factors = rng.uniform(1.0 - amount, 1.0 + amount, size=3)
    source['image'] = _apply_color(np.asarray(source['image'], np.float32), factors)
    driving['image'] = _apply_color(np.asarray(driving['image'], np.float32), factors)
  return source, driving


def _pair_to_example(source: dict[str, np.ndarray], driving: dict[str, np.ndarray]):
  return {
    'source': np.ascontiguousarray(source['image'], np.float32),
    'driving': np.ascontiguousarray(driving['image'], np.float32),
    'source_landmarks': np.asarray(source['landmarks'], np.float32),
    'driving_landmarks': np.asarray(driving['landmarks'], np.float32),
    'source_mask': np.ascontiguousarray(source['mask'], np.float32),
    'driving_mask': np.ascontiguousarray(driving['mask'], np.float32),
  }


class MakePair(grain.transforms.Map):
  """pair index -> one training example (see the module docstring)."""

  def __init__(
    self,
    frames: FrameSource,
    *,
    seed: int,
    augmentation: Augmentation | None,
    max_frame_gap: int = 0,
    pseudo_pairs: PseudoPairs | None = None,
  ):
    self._frames = frames
    self._pseudo_pairs = pseudo_pairs
    self._seed = seed
    self._augmentation = augmentation
    self._max_frame_gap = max_frame_gap
    by_identity: dict[str, list[Clip]] = {}
    for clip in frames.clips:
      if clip.num_frames >= 2:
        by_identity.setdefault(clip.identity, []).append(clip)
    if not by_identity:
      raise ValueError('The data has no clip with at least two frames: nothing to pair.')
    self._identities = sorted(by_identity)
    self._by_identity = by_identity

  def indices(self, pair_index: int) -> tuple[int, int, np.random.Generator]:
    """Frame indices of the pair's source and driving frame, and its augmentation RNG."""
    rng = np.random.default_rng([self._seed, int(pair_index)])
    identity = self._identities[rng.integers(len(self._identities))]
    clips = self._by_identity[identity]
    clip = clips[rng.integers(len(clips))]
    source = int(rng.integers(clip.num_frames))
    if self._max_frame_gap:
      low = max(0, source - self._max_frame_gap)
      high = min(clip.num_frames, source + self._max_frame_gap + 1)
      driving = int(rng.integers(low, high))
    else:
      driving = int(rng.integers(clip.num_frames))
    return clip.first + source, clip.first + driving, rng

  def map(self, pair_index: int) -> dict[str, np.ndarray]:
    source_index, driving_index, rng = self.indices(pair_index)
    pseudo = self._pseudo_pairs
    if pseudo is not None and rng.random() < pseudo.fraction:
      portrait = int(rng.integers(len(pseudo.images)))
      source, driving = pseudo.frame(portrait, rng), pseudo.frame(portrait, rng)
    else:
      source = self._frames.frame(source_index)
      driving = self._frames.frame(driving_index)
    if self._augmentation is not None:
      source, driving = augment_pair(source, driving, rng, self._augmentation)
    return _pair_to_example(source, driving)


def local_batch_size(global_batch_size: int, num_shards: int | None = None) -> int:
  """This process's part of the global batch (`num_shards` defaults to the process count)."""
  num_shards = jax.process_count() if num_shards is None else num_shards
  if global_batch_size % num_shards:
    raise ValueError(
      f'config.train.batch_size={global_batch_size} is not divisible by the {num_shards} processes.'
    )
  return global_batch_size // num_shards


def make_train_dataset(
  config: ml_collections.ConfigDict,
  frames: FrameSource | None = None,
  *,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> grain.IterDataset:
  """Infinite stream of this process's batches: dict of numpy arrays, leading dim local batch.

  Shard `shard_index` of `shard_count` reads pair indices shard_index, shard_index + count, ...
  (disjoint across shards) and batches of batch_size / shard_count; both default to this
  process's place among the JAX processes (grain ShardByJaxProcess).
  """
  if (shard_index is None) != (shard_count is None):
    raise ValueError('Give both shard_index and shard_count, or neither.')
  if shard_index is None:
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    shard_index, shard_count = shard.shard_index, shard.shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} is not in [0, shard_count={shard_count}).')
  frames = frames if frames is not None else make_frame_source(config, 'train')
  make_pair = MakePair(
    frames,
    seed=config.seed,
    augmentation=Augmentation.from_config(config.data),
    max_frame_gap=config.data.max_frame_gap,
    pseudo_pairs=PseudoPairs.from_config(config),
  )
  num_threads = max(1, int(config.data.num_threads))
  dataset = grain.MapDataset.range(STREAM_LENGTH)
  dataset = dataset[shard_index::shard_count]
  dataset = dataset.map(make_pair)
  dataset = dataset.batch(
    local_batch_size(config.train.batch_size, shard_count), drop_remainder=True
  )
  # Each reader thread builds whole batches; keep every thread busy with a spare in the queue.
  dataset = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(4, 2 * num_threads))
  )
  if config.data.num_workers > 0:
    # grain reads its absl flags when it starts workers; a library caller (a test, a notebook)
    # may never have parsed flags, and then grain's defaults are the right values.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=int(config.data.num_workers))
    )
  return dataset


def measure_throughput(
  config: ml_collections.ConfigDict, *, num_batches: int, warmup_batches: int
) -> dict[str, Any]:
  """Training pairs per second of the train pipeline (decoded, augmented, batched).

  Builds the pipeline of one process (shard 0 of 1, so the local batch is
  config.train.batch_size), reads `warmup_batches` (worker start-up, file opening, filling the
  prefetch buffer: use at least 2 * num_threads), then times `num_batches`. Wall-clock
  throughput depends on what else runs on the machine; cpu_ms_per_pair (this process's CPU
  time, all threads; None with worker processes, whose CPU time it cannot see) does less.

  Returns:
    dict(pairs_per_sec, num_workers, num_threads, batch_size, image_size, cpu_ms_per_pair).
  """
  if num_batches < 1:
    raise ValueError(f'num_batches must be at least 1, got {num_batches}.')
  dataset = make_train_dataset(config, shard_index=0, shard_count=1)
  iterator = iter(dataset)
  for _ in range(warmup_batches):
    next(iterator)
  cpu_start = _process_cpu_seconds()
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  seconds = time.perf_counter() - start
  cpu_seconds = _process_cpu_seconds() - cpu_start
  close = getattr(iterator, 'close', None)
  if close is not None:
    close()
  batch_size = int(config.train.batch_size)
  num_pairs = num_batches * batch_size
  num_workers = int(config.data.num_workers)
  return {
    'pairs_per_sec': num_pairs / seconds,
    'num_workers': num_workers,
    'num_threads': max(1, int(config.data.num_threads)),
    'batch_size': batch_size,
    'image_size': int(config.image_size),
    'cpu_ms_per_pair': None if num_workers else 1e3 * cpu_seconds / num_pairs,
  }


def _process_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


class Iterator:
  """Batches of the train stream with a checkpointable position.

  `get_state()` is the position after the last batch returned by `next()` (not after what a
  prefetcher has read ahead), so a checkpoint taken after step k resumes at batch k + 1.
  """

  def __init__(self, dataset: grain.IterDataset):
    self._iterator = iter(dataset)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict[str, Any]:
    return self._iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._iterator.set_state(state)


def log_source(frames: FrameSource) -> None:
  identities = {clip.identity for clip in frames.clips}
  logging.info(
    'Data: %d clips, %d identities, %d frames.',
    len(frames.clips),
    len(identities),
    sum(clip.num_frames for clip in frames.clips),
  )
