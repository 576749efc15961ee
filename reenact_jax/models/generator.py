"""The generator: encoder, geometric prior, 3D flow, warp, projection, renderer, inpainter.

Built by `make_generator(config.model, config.image_size)` outside jit; the module
holds only plain Python fields.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reenact_jax import face_topology, geometry, warp
from reenact_jax.models import layers
from reenact_jax.models.encoder import AppearanceEncoder
from reenact_jax.models.flow import FlowHourglass3D
from reenact_jax.models.inpainter import GatedInpainter
from reenact_jax.models.projection import Projection
from reenact_jax.models.renderer import ForegroundRenderer

# Spatial downsampling from the image to the feature volume (H' = H / 4), fixed by the design.
VOLUME_STRIDE = 4
# The generator's inputs, in the order of Generator.__call__ (and of the exported artifact).
INPUT_NAMES = ('source', 'source_landmarks', 'driving_landmarks', 'source_mask')


class Generator(nn.Module):
  """Reenacts the source with the driving landmarks' pose and expression.

  Fields mirror `config.model` (see configs/base.py); `stable_indices` are the landmark indices
  used for the rigid fit of the geometric prior (face_topology.STABLE). Initialise with
  warp_only=False: warp_only skips the renderer and inpainter, so it would not create their
  parameters. The cycle adds no parameters (it reuses the flow network and the projection).
  """

  image_size: int
  num_landmarks: int
  stable_indices: tuple[int, ...]
  encoder_channels: Sequence[int]
  volume_channels: int
  volume_depth: int
  landmark_sigma: float
  flow_compress_channels: int
  flow_channels: Sequence[int]
  flow_residual_scale: float
  projection_channels: int
  renderer_channels: Sequence[int]
  renderer_down_levels: int
  renderer_bottleneck: str
  renderer_num_layers: int
  renderer_num_heads: int
  renderer_token_patch: int
  inpainter_channels: Sequence[int]
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.encoder = AppearanceEncoder(
      self.encoder_channels,
      self.volume_channels,
      self.volume_depth,
      remat=self.remat,
      dtype=self.dtype,
    )
    self.flow_net = FlowHourglass3D(
      self.flow_channels,
      self.flow_compress_channels,
      self.flow_residual_scale,
      remat=self.remat,
      dtype=self.dtype,
    )
    self.projection = Projection(self.projection_channels, dtype=self.dtype)
    self.renderer = ForegroundRenderer(
      self.projection_channels,
      self.renderer_down_levels,
      self.renderer_channels,
      self.renderer_bottleneck,
      self.renderer_num_layers,
      self.renderer_num_heads,
      self.renderer_token_patch,
      remat=self.remat,
      dtype=self.dtype,
    )
    self.inpainter = GatedInpainter(self.inpainter_channels, remat=self.remat, dtype=self.dtype)

  def _prior(self, from_landmarks: jax.Array, to_landmarks: jax.Array, volume_shape):
    """Backward flow from `to` space into `from` space: (B, D, H', W', 3), (B, D, H', W', 1)."""
    _, depth, height, width, _ = volume_shape
    return geometry.initial_flow(
      jax.lax.stop_gradient(from_landmarks.astype(jnp.float32)),
      jax.lax.stop_gradient(to_landmarks.astype(jnp.float32)),
      depth=depth,
      height=height,
      width=width,
      sigma=self.landmark_sigma,
      stable_indices=np.asarray(self.stable_indices, dtype=np.int32),
    )

  def _check_inputs(self, source, source_landmarks, driving_landmarks, source_mask):
    size = self.image_size
    expected = {
      'source': (source, (size, size, 3)),
      'source_landmarks': (source_landmarks, (self.num_landmarks, 3)),
      'driving_landmarks': (driving_landmarks, (self.num_landmarks, 3)),
      'source_mask': (source_mask, (size, size, 1)),
    }
    for name, (array, trailing) in expected.items():
      if array.ndim != len(trailing) + 1 or tuple(array.shape[1:]) != trailing:
        raise ValueError(
          f'Generator input {name} has shape {tuple(array.shape)}; expected (B, '
          f'{", ".join(map(str, trailing))}) for image_size={size} and '
          f'num_landmarks={self.num_landmarks} (check the config matches the data).'
        )

  def __call__(
    self,
    source: jax.Array,
    source_landmarks: jax.Array,
    driving_landmarks: jax.Array,
    source_mask: jax.Array,
    *,
    with_cycle: bool = False,
    warp_only: bool = False,
  ) -> dict[str, jax.Array]:
    """Runs the generator; every output is float32.

    Args:
      source: (B, H, W, 3) source frame in [0, 1].
      source_landmarks, driving_landmarks: (B, N, 3) normalised landmarks.
      source_mask: (B, H, W, 1) {0, 1} face mask of the source.
      with_cycle: also warp the warped volume back (D -> S) for the cyclic warp loss.
      warp_only: skip renderer, inpainter and composite (training phase 1).

    Returns:
      dict with 'projected' (B, H/4, W/4, 3), 'flow' and 'flow_prior' (B, D, H/4, W/4, 3),
      'confidence' (B, D, H/4, W/4, 1), 'occlusion' (B, H/4, W/4, 1); with_cycle adds
      'projected_cycle' (B, H/4, W/4, 3); unless warp_only: 'foreground', 'background',
      'output' (B, H, W, 3) and 'alpha' (B, H, W, 1). Images in [0, 1].
    """
    self._check_inputs(source, source_landmarks, driving_landmarks, source_mask)
    source_volume = self.encoder(source)
    flow_prior, confidence = self._prior(source_landmarks, driving_landmarks, source_volume.shape)
    flow, occlusion = self.flow_net(source_volume, flow_prior, confidence)
    warped_volume = warp.warp_3d(source_volume, flow).astype(self.dtype)
    projected_features, projected = self.projection(warped_volume)
    outputs = {
      'projected': projected,
      'flow': flow,
      'flow_prior': flow_prior.astype(jnp.float32),
      'confidence': confidence.astype(jnp.float32),
      'occlusion': occlusion,
    }
    if with_cycle:
      # Same flow network, roles swapped: the warped volume is now the "source" and the prior
      # maps source space back into driving space.
      reverse_prior, reverse_confidence = self._prior(
        driving_landmarks, source_landmarks, warped_volume.shape
      )
      reverse_flow, _ = self.flow_net(warped_volume, reverse_prior, reverse_confidence)
      cycled_volume = warp.warp_3d(warped_volume, reverse_flow).astype(self.dtype)
      _, outputs['projected_cycle'] = self.projection(cycled_volume)
    if warp_only:
      return outputs
    foreground, alpha = self.renderer(projected_features, occlusion)
    background = self.inpainter(source, source_mask)
    outputs.update(
      foreground=foreground,
      alpha=alpha,
      background=background,
      output=alpha * foreground + (1.0 - alpha) * background,
    )
    return outputs


def _stable_indices(num_landmarks: int) -> tuple[int, ...]:
  indices = tuple(int(i) for i in np.asarray(face_topology.STABLE).reshape(-1))
  if max(indices) >= num_landmarks:
    raise ValueError(
      f'face_topology.STABLE indexes up to {max(indices)} but model.num_landmarks={num_landmarks};'
      ' the landmark topology and the config disagree.'
    )
  return indices


def make_generator(model_config: ml_collections.ConfigDict, image_size: int) -> Generator:
  """Builds the Generator from `config.model` for `image_size`×`image_size` frames.

  Validates the sizes so that a mismatch fails here with the key to change, not inside jit.
  """
  m = model_config
  encoder_channels = layers.as_tuple(m.encoder_channels)
  if 2 ** (len(encoder_channels) - 1) != VOLUME_STRIDE:
    raise ValueError(
      f'model.encoder_channels={encoder_channels} gives a volume stride of '
      f'{2 ** (len(encoder_channels) - 1)}; it must have 3 entries (stem + two 2× blocks) so '
      f'that the feature volume is at H/{VOLUME_STRIDE}.'
    )
  renderer_channels = layers.as_tuple(m.renderer_channels)
  if 2 ** len(renderer_channels) != VOLUME_STRIDE:
    raise ValueError(
      f'model.renderer_channels={renderer_channels} must have 2 entries (one per 2× upsampling '
      f'from H/{VOLUME_STRIDE} back to H).'
    )
  flow_channels = layers.as_tuple(m.flow_channels)
  volume_size = image_size // VOLUME_STRIDE
  layers.check_divisible('image_size', image_size, VOLUME_STRIDE, 'the volume is at H/4')
  layers.check_divisible(
    'image_size / 4',
    volume_size,
    2 ** (len(flow_channels) - 1),
    'the 3D hourglass halves H and W once per entry of model.flow_channels after the first',
  )
  bottleneck_size = volume_size // 2**m.renderer_down_levels
  layers.check_divisible(
    'image_size / 4', volume_size, 2**m.renderer_down_levels, 'model.renderer_down_levels'
  )
  if m.renderer_bottleneck == 'transformer':
    layers.check_divisible(
      'renderer bottleneck size (image_size / 4 / 2**renderer_down_levels)',
      bottleneck_size,
      m.renderer_token_patch,
      'model.renderer_token_patch',
    )
    layers.check_divisible(
      'renderer bottleneck width (projection_channels * 2**renderer_down_levels)',
      m.projection_channels * 2**m.renderer_down_levels,
      m.renderer_num_heads,
      'model.renderer_num_heads',
    )
  elif m.renderer_bottleneck != 'resblocks':
    raise ValueError(
      f"model.renderer_bottleneck={m.renderer_bottleneck!r}; use 'transformer' or 'resblocks'."
    )
  inpainter_channels = layers.as_tuple(m.inpainter_channels)
  layers.check_divisible(
    'image_size',
    image_size,
    2 ** (len(inpainter_channels) - 1),
    'the inpainter halves the resolution once per entry of model.inpainter_channels after the '
    'first',
  )
  return Generator(
    image_size=int(image_size),
    num_landmarks=int(m.num_landmarks),
    stable_indices=_stable_indices(int(m.num_landmarks)),
    encoder_channels=encoder_channels,
    volume_channels=int(m.volume_channels),
    volume_depth=int(m.volume_depth),
    landmark_sigma=float(m.landmark_sigma),
    flow_compress_channels=int(m.flow_compress_channels),
    flow_channels=flow_channels,
    flow_residual_scale=float(m.flow_residual_scale),
    projection_channels=int(m.projection_channels),
    renderer_channels=renderer_channels,
    renderer_down_levels=int(m.renderer_down_levels),
    renderer_bottleneck=str(m.renderer_bottleneck),
    renderer_num_layers=int(m.renderer_num_layers),
    renderer_num_heads=int(m.renderer_num_heads),
    renderer_token_patch=int(m.renderer_token_patch),
    inpainter_channels=inpainter_channels,
    remat=bool(m.remat),
    dtype=layers.compute_dtype(m.compute_dtype),
  )


def example_inputs(generator: Generator, batch_size: int = 1) -> dict[str, jax.Array]:
  """Zero inputs of the generator's shapes (INPUT_NAMES), for initialisation and lowering."""
  size, points = generator.image_size, generator.num_landmarks
  image = jnp.zeros((batch_size, size, size, 3), jnp.float32)
  landmarks = jnp.zeros((batch_size, points, 3), jnp.float32)
  mask = jnp.zeros((batch_size, size, size, 1), jnp.float32)
  return {
    'source': image,
    'source_landmarks': landmarks,
    'driving_landmarks': landmarks,
    'source_mask': mask,
  }


def init_params(generator: Generator, rng: jax.Array):
  """Fresh generator parameters (every part, the renderer and inpainter included)."""
  return generator.init(rng, **example_inputs(generator), with_cycle=True, warp_only=False)[
    'params'
  ]


def render(generator: Generator, params, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The inference forward pass (full renderer, no cycle): the dict of outputs.

  The one forward pass of the project: training images, evaluation, reenact, export and the
  benchmarks all call it (through inference.render_fn where it is compiled).

  Args:
    inputs: INPUT_NAMES -> arrays, see Generator.__call__.
  """
  return generator.apply(
    {'params': params},
    **{name: inputs[name] for name in INPUT_NAMES},
    with_cycle=False,
    warp_only=False,
  )
