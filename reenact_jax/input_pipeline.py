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
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from reenact_jax import augmentation, bundled, crops, models, records, synthetic
from reenact_jax.records import Clip

# Virtual length of the infinite pair stream; the trainer stops long before it ends.
STREAM_LENGTH = 10**12


class FrameSource(Protocol):
  """Random access to prepared frames, grouped into clips."""

  clips: Sequence[Clip]

  def frame(self, index: int) -> dict[str, np.ndarray]:
    """'image' (H, W, 3) float32 [0, 1], 'landmarks' (N, 3) float32, 'mask' (H, W, 1) {0, 1}
    face oval, 'matte' (H, W, 1) [0, 1] person matte."""
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

  def true_flow(self, source_index: int, driving_index: int) -> np.ndarray:
    """synthetic.true_flow between two frames of one clip (H, W, 2)."""
    clip, source_frame = divmod(int(source_index), self._frames_per_clip)
    driving_clip, driving_frame = divmod(int(driving_index), self._frames_per_clip)
    if clip != driving_clip:
      raise ValueError(f'frames {source_index} and {driving_index} are of different clips.')
    return synthetic.true_flow(
      clip,
      source_frame,
      driving_frame,
      image_size=self._image_size,
      num_frames=self._frames_per_clip,
      seed=self._seed,
    )

  def frame(self, index: int) -> dict[str, np.ndarray]:
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
  return bundled.default_cache_dir()


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
    if data.source == 'demo':
      directory = bundled.prepared_demo_dir(cache_dir(data), resolution=config.image_size)
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
  """Still portraits as (source, driving) pairs with known motion: the portrait, and its head
  re-posed over the still background (augmentation.repose)."""

  images: np.ndarray  # (P, S, S, 3) float32 [0, 1]
  landmarks: np.ndarray  # (P, N, 3) float32
  mattes: np.ndarray  # (P, S, S, 1) float32 [0, 1]
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
    with np.load(bundled.prepared_portraits(cache_dir(data), config.image_size)) as arrays:
      images = arrays['images'].astype(np.float32) / 255.0
      landmarks = arrays['landmarks'].astype(np.float32)
      mattes = arrays['mattes'][..., None].astype(np.float32) / 255.0
    return cls(
      images,
      landmarks,
      mattes,
      float(data.pseudo_pair_fraction),
      float(data.pseudo_max_rotation_deg),
      float(data.pseudo_max_scale),
      float(data.pseudo_max_translation),
      float(data.pseudo_max_deformation),
    )

  def pair(self, portrait: int, rng: np.random.Generator):
    """(source, driving) frames: the portrait as it is, and re-posed."""
    source = {
      'image': self.images[portrait],
      'landmarks': self.landmarks[portrait],
      'mask': crops.face_oval_mask(self.landmarks[portrait], *self.images.shape[1:3]),
      'matte': self.mattes[portrait],
    }
    return source, self.reposed(source, rng)

  def reposed(self, source: dict[str, np.ndarray], rng: np.random.Generator):
    """The portrait frame `source` re-posed (a driving frame, or another view of the source),
    with 'flow', its backward flow to the portrait."""
    image, landmarks, mask, matte, flow = augmentation.repose(
      source['image'],
      source['landmarks'],
      source['matte'],
      rng=rng,
      max_rotation_deg=self.max_rotation_deg,
      max_scale=self.max_scale,
      max_translation=self.max_translation,
      max_deformation=self.max_deformation,
      with_flow=True,
    )
    return {'image': image, 'landmarks': landmarks, 'mask': mask, 'matte': matte, 'flow': flow}


def pair_to_example(
  source: dict[str, np.ndarray],
  driving: dict[str, np.ndarray],
  extra_sources: Sequence[dict[str, np.ndarray]] = (),
) -> dict[str, np.ndarray]:
  """A training / evaluation example (the steps' batch layout) from two frames, and more views
  of the source person (models.EXTRA_SOURCE_NAMES: (K - 1, ...) stacks of their images,
  landmarks and mattes) when `extra_sources` are given.

  A driving frame whose true motion is known carries 'flow' (H, W, 2), the backward flow to the
  source (pseudo-pairs, synthetic clips); the example then has 'flow_known' 1 and that flow as
  'driving_flow', otherwise 0 and zeros. A source with a synthetic occluder
  (augmentation.occluded_frame) carries its coverage as 'source_occluder' (zeros otherwise).
  """
  flow = driving.get('flow')
  known = flow is not None
  occluder = source.get('occluder')
  if occluder is None:
    occluder = np.zeros(np.shape(source['image'])[:2] + (1,), np.float32)
  if not known:
    flow = np.zeros(np.shape(driving['image'])[:2] + (2,), np.float32)
  example = {
    'driving_flow': np.ascontiguousarray(flow, np.float32),
    'flow_known': np.float32(known),
    'source': np.ascontiguousarray(source['image'], np.float32),
    'driving': np.ascontiguousarray(driving['image'], np.float32),
    'source_landmarks': np.asarray(source['landmarks'], np.float32),
    'driving_landmarks': np.asarray(driving['landmarks'], np.float32),
    'source_mask': np.ascontiguousarray(source['mask'], np.float32),
    'driving_mask': np.ascontiguousarray(driving['mask'], np.float32),
    'source_matte': np.ascontiguousarray(source['matte'], np.float32),
    'source_occluder': np.ascontiguousarray(occluder, np.float32),
    'driving_matte': np.ascontiguousarray(driving['matte'], np.float32),
  }
  if extra_sources:
    for name, key in zip(models.EXTRA_SOURCE_NAMES, ('image', 'landmarks', 'matte'), strict=True):
      example[name] = np.stack([np.asarray(view[key], np.float32) for view in extra_sources])
  return example


class MakePair(grain.transforms.Map):
  """pair index -> one training example (see the module docstring)."""

  def __init__(
    self,
    frames: FrameSource,
    *,
    seed: int,
    augment: augmentation.Augmentation | None,
    max_frame_gap: int = 0,
    pseudo_pairs: PseudoPairs | None = None,
    num_sources: int = 1,
  ):
    if num_sources < 1:
      raise ValueError(f'config.data.num_sources={num_sources}; it must be >= 1.')
    self._num_sources = num_sources
    self._frames = frames
    self._pseudo_pairs = pseudo_pairs
    self._seed = seed
    self._augmentation = augment
    self._max_frame_gap = max_frame_gap
    by_identity: dict[str, list[Clip]] = {}
    for clip in frames.clips:
      if clip.num_frames >= 2:
        by_identity.setdefault(clip.identity, []).append(clip)
    if not by_identity:
      raise ValueError('The data has no clip with at least two frames: nothing to pair.')
    self._identities = sorted(by_identity)
    self._by_identity = by_identity

  def indices(self, pair_index: int) -> tuple[int, int, np.random.Generator, list[int]]:
    """Frame indices of the pair's source and driving frame, its augmentation RNG, and the
    frame indices of its extra source views (num_sources - 1 other frames of the clip)."""
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
    extras = []
    if self._num_sources > 1:
      # Other frames than the source and the driving frame where the clip has them (the same
      # frame adds no view; the driving frame itself would be a copy of the target), drawn from
      # their own RNG: the pair's other draws are those of one source.
      others = np.setdiff1d(np.arange(clip.num_frames), [source, driving])
      if len(others) == 0:
        others = np.delete(np.arange(clip.num_frames), source)
      views = np.random.default_rng([self._seed, int(pair_index), 1])
      count = self._num_sources - 1
      picked = views.choice(others, size=count, replace=len(others) < count)
      extras = [clip.first + int(frame) for frame in picked]
    return clip.first + source, clip.first + driving, rng, extras

  def map(self, pair_index: int) -> dict[str, np.ndarray]:
    source_index, driving_index, rng, extra_indices = self.indices(pair_index)
    pseudo = self._pseudo_pairs
    if pseudo is not None and rng.random() < pseudo.fraction:
      portrait = int(rng.integers(len(pseudo.images)))
      source, driving = pseudo.pair(portrait, rng)
      # The other views of a still portrait: more re-posings of it (their flows unused).
      extras = [pseudo.reposed(source, rng) for _ in extra_indices]
      for view in extras:
        view.pop('flow')
    else:
      source = self._frames.frame(source_index)
      driving = self._frames.frame(driving_index)
      extras = [self._frames.frame(index) for index in extra_indices]
      true_flow = getattr(self._frames, 'true_flow', None)
      if true_flow is not None:
        driving['flow'] = true_flow(source_index, driving_index)
    if self._augmentation is not None:
      source, driving, extras = augmentation.augment_views(
        source, driving, extras, rng, self._augmentation
      )
    return pair_to_example(source, driving, extras)


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
    augment=augmentation.Augmentation.from_config(config.data),
    max_frame_gap=config.data.max_frame_gap,
    pseudo_pairs=PseudoPairs.from_config(config),
    num_sources=int(config.data.num_sources),
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
