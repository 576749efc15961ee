"""The generator: encoder, geometric prior, 3D flow, warp, projection, renderer, inpainter.

Built by `make_generator(config.model, config.image_size)` outside jit; the module
holds only plain Python fields.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reenact_jax import face_topology, geometry, warp
from reenact_jax.models import fusion, layers
from reenact_jax.models.encoder import AppearanceEncoder
from reenact_jax.models.flow import FlowHourglass3D
from reenact_jax.models.inpainter import GatedInpainter
from reenact_jax.models.projection import Projection
from reenact_jax.models.renderer import ForegroundRenderer

# Spatial downsampling from the image to the feature volume (H' = H / 4), fixed by the design.
VOLUME_STRIDE = 4
# The generator's inputs, in the order of Generator.__call__ (and of the exported artifact).
INPUT_NAMES = ('source', 'source_landmarks', 'driving_landmarks', 'source_mask', 'source_matte')
# More views of the source person (several source images), optional keyword inputs: (B, K - 1,
# H, W, 3) images, (B, K - 1, N, 3) landmarks, (B, K - 1, H, W, 1) person mattes.
EXTRA_SOURCE_NAMES = ('extra_sources', 'extra_source_landmarks', 'extra_source_mattes')
# How the full 3D convolutions run: XLA's own (accelerators) or as 2D convolutions (CPU).
VOLUME_CONV_LOWERINGS = ('xla', 'depth_in_channels')
# Parts trained from phase 1 (the warp) and parts that start in phase 2 (the rendering): each
# group has its own optimiser state (train_state.py).
# 'fusion' (the learned fusion head of several source views) exists with model.fusion_head only.
WARP_PARTS = ('encoder', 'flow_net', 'projection', 'fusion')
RENDER_PARTS = ('renderer', 'inpainter')


@dataclasses.dataclass(frozen=True)
class Prior:
  """The geometric prior of a source/driving pair at the volume's resolution (no weights)."""

  flow: jax.Array  # (B, D, h, w, 3) backward 3D flow: the head moves, the rest stays.
  head_flow: jax.Array  # (B, D, h, w, 3) the head's motion everywhere (see initial_flow).
  confidence: jax.Array  # (B, D, h, w, 1) in [0, 1].
  source_head: jax.Array  # (B, h, w) the source's head weight (matte x head region).


def person_parts(landmarks: jax.Array, matte: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(head, rest) of a person matte (B, H, W, 1): the head (face, hair, ears: the matte times
  geometry.head_region) moves with the landmarks; the rest (neck, shoulders, torso) does not."""
  matte = matte.astype(jnp.float32)
  region = geometry.head_region(landmarks, matte.shape[1], matte.shape[2])[..., None]
  return matte * region, matte * (1.0 - region)


def geometric_prior(
  source_landmarks: jax.Array,
  driving_landmarks: jax.Array,
  source_head: jax.Array,
  *,
  depth: int,
  sigma: float,
  stable_indices,
) -> Prior:
  """geometry.initial_flow with the source head weight (B, h, w) at the volume's size."""
  source_head = jax.lax.stop_gradient(source_head.astype(jnp.float32))
  flow, confidence, head_flow = geometry.initial_flow(
    source_landmarks,
    driving_landmarks,
    depth=depth,
    height=source_head.shape[1],
    width=source_head.shape[2],
    sigma=sigma,
    stable_indices=np.asarray(stable_indices, dtype=np.int32),
    source_head=source_head,
  )
  return Prior(flow, head_flow, confidence, source_head)


# The background shows the refilled hole where the head moved by this many pixels or more (and
# the source's own pixels where it stayed: a still head is reproduced exactly, soft edges too).
UNCOVERED_MOTION_PIXELS = 2.0


@dataclasses.dataclass(frozen=True)
class Warped:
  """The source's pixels moved by a projected flow, at the image's resolution (B, H, W, C)."""

  flow_2d: jax.Array  # (B, H, W, 2) the head's flow projected to the image.
  image: jax.Array  # (B, H, W, 3) the moved head over the (partly moved) rest of the source.
  validity: jax.Array  # (B, H, W, 1) 0 where the moved head samples outside the source.
  person: jax.Array  # (B, H, W, 1) where the moved person is: the moved head over the rest.
  head_motion: jax.Array  # (B, H, W, 1) how far the head moved at each pixel, in [0, 1].
  still_rest: jax.Array  # (B, H, W, 1) the part of the source's rest that stays where it is.
  background: jax.Array  # (B, H, W, 3) the source with `fill` where the person moved away from.

  @property
  def alpha(self) -> jax.Array:
    """(B, H, W, 1) the person's outline as the warp knows it: the moved person where its
    pixels come from the source, 0 where they would come from off it."""
    return self.person * self.validity


@dataclasses.dataclass(frozen=True)
class SourceViews:
  """K views of the source person for one output, each with its own head flow, flattened
  view-major inside each example ((B K, ...), index b K + k; k = 0 the primary source)."""

  images: jax.Array  # (B K, H, W, 3)
  heads: jax.Array  # (B K, H, W, 1) each view's head (person_parts).
  rests: jax.Array  # (B K, H, W, 1) each view's rest of the person.
  flows: jax.Array  # (B K, H, W, 2) each view's head image flow to the driving pose.
  weights: jax.Array  # (B, K, H, W, 1) how much each view shows at each pixel (sums to 1).


def warp_person(
  source: jax.Array,
  source_head: jax.Array,
  source_rest: jax.Array,
  flow_2d: jax.Array,
  hole: jax.Array,
  fill: jax.Array,
  follows: tuple[jax.Array, jax.Array] | None = None,
  views: SourceViews | None = None,
) -> Warped:
  """Moves the source's pixels as the person moves: the head by its image flow `flow_2d`
  (B, H, W, 2) (image_flow), and the rest of the person (neck, torso) by a fraction of it, over
  the still background.

  `follows` (follows_head) is (head, fraction), each (B, H, W, 1) in output space: the driving
  head region, and how much of the head's flow each pixel follows (1 on the head, fading down
  the neck to 0 at the shoulders). The output pixels are split between them: the head's part
  shows the person moved by the whole flow, the rest's part the person moved by the fraction of
  it, so the neck stretches between the moving chin and the still shoulders with no gap under
  the chin. follows=None (runs saved before it): the rest stays where it is, a layer under the
  moved head.

  The moved person is composited over the background layer: the source itself, except where the
  person moved away from (inside the person's `hole`), which shows `fill` (the hole filled from
  the known background: never the head where it was). Nothing is stretched between the person
  and the background.

  `views` (several source images): the moved head shows each view's head moved by its own flow,
  blended by the views' weights (_fused_layer); the rest of the person and the background are
  the primary source's (`source`, whose flow is `flow_2d`).
  """
  size = source.shape[1:3]
  source = source.astype(jnp.float32)
  source_rest = source_rest.astype(jnp.float32)
  head_motion = _motion(flow_2d, size)
  if follows is None:
    if views is None:
      head_image, moved_head, inside = _moved_layer(source, source_head, flow_2d)
    else:
      head_image, moved_head, inside = _fused_layer(views, whole_person=False)
    still_rest = source_rest
    background = composite_background(source, fill, hole, still_rest, head_motion)
    image = moved_head * head_image + (1.0 - moved_head) * background
    person = jnp.clip(moved_head + source_rest, 0.0, 1.0)
  else:
    head, fraction = (part.astype(jnp.float32) for part in follows)
    matte = jnp.clip(source_head + source_rest, 0.0, 1.0)
    if views is None:
      head_image, moved_head, inside = _moved_layer(source, matte, flow_2d)
    else:
      head_image, moved_head, inside = _fused_layer(views, whole_person=True)
    moved_head = moved_head * head
    # The rest never leaves the image: where its flow samples off the source, the border is
    # repeated (the torso goes on below the frame); only the head's samples can be invalid.
    rest_flow = warp.clamped_flow(fraction * flow_2d)
    parts = jnp.concatenate([source_rest, source_head.astype(jnp.float32)], axis=-1)
    rest_image, moved_parts, _ = _moved_layer(source, parts, rest_flow)
    # The rest layer shows the source's head only as far as it follows the head: where the head
    # moved away from, the rest's flow is ~0 and its head pixels (her hair) would stay behind.
    # Not masked by (1 - head): at the head's soft edge the two layers' weights add up.
    moved_rest = moved_parts[..., :1] + fraction * moved_parts[..., 1:]
    person = jnp.clip(moved_head + moved_rest, 0.0, 1.0)
    if views is not None:
      # The rest layer's head part (half of every head pixel's weight) shows the views' heads
      # moved by the rest's flow, blended as the head layer is, not the primary source alone.
      count = views.flows.shape[0] // flow_2d.shape[0]
      rest_flows = warp.clamped_flow(jnp.repeat(fraction, count, axis=0) * views.flows)
      follow, _, _ = _fused_layer(dataclasses.replace(views, flows=rest_flows), whole_person=False)
      head_part = fraction * moved_parts[..., 1:]
      rest_image = (moved_parts[..., :1] * rest_image + head_part * follow) / jnp.maximum(
        moved_rest, 1e-3
      )
    shown = (moved_head * head_image + moved_rest * rest_image) / jnp.maximum(
      moved_head + moved_rest, 1e-3
    )
    still_rest = source_rest * (1.0 - _motion(rest_flow, size, grow=False))
    background = composite_background(source, fill, hole, still_rest, head_motion)
    image = person * shown + (1.0 - person) * background
  validity = moved_head * inside + (1.0 - moved_head)
  return Warped(flow_2d, image, validity, person, head_motion, still_rest, background)


def _moved_layer(source: jax.Array, weights: jax.Array, flow: jax.Array):
  """(image, weights, inside) of the source and layer weights (B, H, W, K) moved together by a
  backward flow (B, H, W, 2), in one warp; inside is 0 where the flow samples off the source."""
  weights = weights.astype(jnp.float32)
  stacked = jnp.concatenate([source, weights, jnp.ones_like(weights[..., :1])], axis=-1)
  moved = warp.warp_2d(stacked, flow)
  inside = jnp.clip(moved[..., -1:], 0.0, 1.0)
  # Bilinear weights outside the image are 0: renormalise the partly outside border pixels.
  image = jnp.clip(moved[..., :3] / jnp.maximum(inside, 1e-3), 0.0, 1.0)
  return image, jnp.clip(moved[..., 3:-1], 0.0, 1.0), inside


def _fused_layer(views: SourceViews, whole_person: bool):
  """_moved_layer's (image, weights, inside) of the views' heads (or whole persons) moved by their
  flows and blended per pixel: each view's image by its weight (views.weights) where its moved
  layer lands and its samples fall on its source; the layer's weight and `inside` are the views'
  weighted means of theirs.
  """
  layer = jnp.clip(views.heads + views.rests, 0.0, 1.0) if whole_person else views.heads
  image, moved, inside = _moved_layer(views.images.astype(jnp.float32), layer, views.flows)
  batch, count = views.weights.shape[:2]
  image, moved, inside = (x.reshape(batch, count, *x.shape[1:]) for x in (image, moved, inside))
  shown = views.weights * inside * moved
  # Where no view shows anything, the primary's image (its border pixels), as with one view.
  fused = (jnp.sum(shown * image, 1) + 1e-3 * image[:, 0]) / (jnp.sum(shown, 1) + 1e-3)
  return fused, jnp.sum(views.weights * moved, 1), jnp.sum(views.weights * inside, 1)


def _motion(flow: jax.Array, size, *, grow: bool = True) -> jax.Array:
  """(B, H, W, 1) in [0, 1]: how far a backward flow (B, H, W, 2) moves each pixel, in units of
  UNCOVERED_MOTION_PIXELS; grown as the hole is (grow): the old head's soft edge (hair blended
  into the background, where the head flow fades to zero) is uncovered with the head, not left
  as an outline."""
  # sqrt of a floored square: the norm's gradient at an exactly still pixel (where the eye mesh
  # holds the flow at 0) would be NaN.
  squared = jnp.sum(jnp.square(flow), axis=-1, keepdims=True)
  pixels = jnp.sqrt(jnp.maximum(squared, 1e-12)) * (size[1] / 2)
  motion = jnp.clip(pixels / UNCOVERED_MOTION_PIXELS, 0.0, 1.0)
  return layers.dilate(motion, geometry.hole_radius(size[0])) if grow else motion


def unseen_mouth(
  source_landmarks: jax.Array, driving_landmarks: jax.Array, flow_2d: jax.Array
) -> jax.Array:
  """(B, H, W, 1) the driving mouth's opening that the moved source does not show.

  The inner-lip polygon of the driving landmarks, less the source's own mouth opening moved by
  the image flow: where the driver opens the mouth wider than the source, the warp can only
  stretch the source's lips across the gap, so that is where the renderer must paint (teeth,
  tongue, the dark of the mouth) instead of keeping the warped pixels.

  A mask, without gradient: the flow is not trained to move the source's mouth so as to widen
  what the renderer may paint.
  """
  flow_2d = jax.lax.stop_gradient(flow_2d)
  height, width = flow_2d.shape[1:3]
  inner = face_topology.LIPS_INNER
  driving = geometry.polygon_mask(driving_landmarks[:, inner, :2], height, width)[..., None]
  source = geometry.polygon_mask(source_landmarks[:, inner, :2], height, width)[..., None]
  moved = jnp.clip(warp.warp_2d(source, flow_2d), 0.0, 1.0)
  return driving * (1.0 - moved)


def driving_face(driving_landmarks: jax.Array, size: int) -> jax.Array:
  """(B, size, size, 1) the face oval of the driving landmarks (geometry.polygon_mask)."""
  oval = jnp.asarray(driving_landmarks, jnp.float32)[:, face_topology.FACE_OVAL, :2]
  return geometry.polygon_mask(oval, size, size)[..., None]


# The dark red of an open mouth's inside (RGB in [0, 1]), shown where the driver's mouth opens
# wider than the source's: better than the source's lips or teeth stretched across the gap.
MOUTH_CAVITY = (0.24, 0.08, 0.08)


def fill_mouth(image: jax.Array, unseen: jax.Array) -> jax.Array:
  """`image` (B, H, W, 3) with MOUTH_CAVITY where `unseen` (B, H, W, 1), unseen_mouth, is."""
  cavity = jnp.asarray(MOUTH_CAVITY, jnp.float32)
  return (1.0 - unseen) * image + unseen * cavity


def follows_head(
  generator: 'Generator', driving_landmarks: jax.Array
) -> tuple[jax.Array, jax.Array] | None:
  """(head, fraction), each (B, H, W, 1) at the output's pixels: the driving head region and
  how much of the head's flow the person follows there (1 on the head, geometry.neck_region
  below it), for warp_person; None when generator.neck_follows is off."""
  if not generator.neck_follows:
    return None
  size = generator.image_size
  landmarks = jnp.asarray(driving_landmarks, jnp.float32)
  head = geometry.head_region(landmarks, size, size)[..., None]
  return head, geometry.neck_region(landmarks, size, size)[..., None]


def composite_background(
  source: jax.Array, filled: jax.Array, hole: jax.Array, source_rest: jax.Array, head_motion
) -> jax.Array:
  """The background layer: the source, except where the moved head uncovered it (inside the
  hole, off the unmoved rest of the person, where the head moved), which shows `filled`."""
  uncovered = hole * (1.0 - source_rest.astype(jnp.float32)) * head_motion
  return source.astype(jnp.float32) * (1.0 - uncovered) + filled * uncovered


def background_fill(source: jax.Array, hole: jax.Array) -> jax.Array:
  """The source with its `hole` filled from the known background around it (layers.fill_holes;
  a pixel partly in the hole keeps its colour, weighted by how known it is)."""
  return layers.fill_holes(source, 1.0 - hole)


def stacked_views(
  source, source_landmarks, source_matte, extra_sources, extra_landmarks, extra_mattes
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(images (B K, H, W, 3), landmarks (B K, N, 3), mattes (B K, H, W, 1)): the primary source
  and its extra views (EXTRA_SOURCE_NAMES, or None for one view), view-major in each example."""
  if extra_sources is None:
    return source, source_landmarks, source_matte

  def stack(first, more):
    both = jnp.concatenate([first[:, None], jnp.asarray(more, first.dtype)], axis=1)
    return both.reshape(-1, *both.shape[2:])

  return (
    stack(source, extra_sources),
    stack(source_landmarks, extra_landmarks),
    stack(source_matte, extra_mattes),
  )


def by_view(x: jax.Array, count: int) -> jax.Array:
  """(B K, ...) views flattened view-major (stacked_views) -> (B, K, ...)."""
  return x.reshape(-1, count, *x.shape[1:])


def primary_view(x: jax.Array, count: int) -> jax.Array:
  """The primary view's part (B, ...) of a (B K, ...) array."""
  return x if count == 1 else by_view(x, count)[:, 0]


def fusion_logits(generator: 'Generator', landmarks, to_views, head_flow, count: int):
  """fusion.geometric_logits of the views at the generator's volume size."""
  size = generator.image_size // VOLUME_STRIDE
  return fusion.geometric_logits(
    landmarks,
    to_views,
    head_flow,
    count,
    depth=generator.volume_depth,
    height=size,
    width=size,
    sigma=generator.landmark_sigma,
    sharpness=generator.fusion_sharpness,
  )


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
  visibility_sharpness: float = 8.0
  # Several source views: the geometric logits' sharpness (models.fusion), and a learned head.
  fusion_sharpness: float = 8.0
  fusion_head: bool = False
  eye_mesh: bool = False  # Move the eyes by their landmark mesh (eye_flow).
  neck_follows: bool = False  # The neck stretches with the head (geometry.neck_region).
  mouth_mesh: bool = False  # Move the lips by their landmark mesh (mouth_flow).
  # The renderer paints from the warped source, not grey, and the driving face is always the
  # person (its alpha at least the face oval and the unseen mouth).
  paint_from_warped: bool = False
  # The person's outline (alpha) is the moved source person wherever the warp has the source's
  # pixels; the renderer's own alpha decides only where it has none (off the source).
  alpha_from_warp: bool = False
  volume_convs: str = '3d'  # '3d' or '2+1d' (layers.VolumeConv).
  volume_conv_lowering: str = 'xla'  # 'xla' or 'depth_in_channels' (layers.VolumeConv).
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    factorized = self.volume_convs == '2+1d'
    depth_in_channels = self.volume_conv_lowering == 'depth_in_channels'
    self.encoder = AppearanceEncoder(
      self.encoder_channels,
      self.volume_channels,
      self.volume_depth,
      factorized=factorized,
      depth_in_channels=depth_in_channels,
      remat=self.remat,
      dtype=self.dtype,
    )
    self.flow_net = FlowHourglass3D(
      self.flow_channels,
      self.flow_compress_channels,
      self.flow_residual_scale,
      factorized=factorized,
      depth_in_channels=depth_in_channels,
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
      paint_from_warped=self.paint_from_warped,
      remat=self.remat,
      dtype=self.dtype,
    )
    self.inpainter = GatedInpainter(self.inpainter_channels, remat=self.remat, dtype=self.dtype)
    if self.fusion_head:
      self.fusion = fusion.FusionHead(dtype=self.dtype)

  def _check_inputs(self, inputs: dict[str, jax.Array], extra: dict[str, jax.Array]) -> None:
    size, points = self.image_size, self.num_landmarks
    image, landmarks, mask = (size, size, 3), (points, 3), (size, size, 1)
    expected = {
      'source': ('B', *image),
      'source_landmarks': ('B', *landmarks),
      'driving_landmarks': ('B', *landmarks),
      'source_mask': ('B', *mask),
      'source_matte': ('B', *mask),
    }
    if any(array is not None for array in extra.values()):
      if any(array is None for array in extra.values()):
        raise ValueError(f'Give all of {", ".join(EXTRA_SOURCE_NAMES)} or none of them.')
      inputs = {**inputs, **extra}
      expected.update(
        extra_sources=('B', 'K - 1', *image),
        extra_source_landmarks=('B', 'K - 1', *landmarks),
        extra_source_mattes=('B', 'K - 1', *mask),
      )
    views = inputs['extra_sources'].shape[1] if 'extra_sources' in inputs else None
    for name, wanted in expected.items():
      array = inputs[name]
      trailing = tuple(d for d in wanted if isinstance(d, int))
      leading = (inputs['source'].shape[0],) + ((views,) if len(wanted) > len(trailing) + 1 else ())
      if tuple(array.shape) != leading + trailing:
        raise ValueError(
          f'Generator input {name} has shape {tuple(array.shape)}; expected '
          f'({", ".join(map(str, wanted))}) for image_size={size} and '
          f'num_landmarks={points} (check the config matches the data).'
        )

  def _prior(self, from_landmarks, to_landmarks, source_head) -> Prior:
    return geometric_prior(
      from_landmarks,
      to_landmarks,
      source_head,
      depth=self.volume_depth,
      sigma=self.landmark_sigma,
      stable_indices=self.stable_indices,
    )

  def __call__(
    self,
    source: jax.Array,
    source_landmarks: jax.Array,
    driving_landmarks: jax.Array,
    source_mask: jax.Array,
    source_matte: jax.Array,
    *,
    extra_sources: jax.Array | None = None,
    extra_source_landmarks: jax.Array | None = None,
    extra_source_mattes: jax.Array | None = None,
    with_cycle: bool = False,
    warp_only: bool = False,
  ) -> dict[str, jax.Array]:
    """Runs the generator; every output is float32.

    Args:
      source: (B, H, W, 3) source frame in [0, 1].
      source_landmarks, driving_landmarks: (B, N, 3) normalised landmarks.
      source_mask: (B, H, W, 1) {0, 1} face-oval mask of the source.
      source_matte: (B, H, W, 1) person matte of the source in [0, 1].
      extra_sources, extra_source_landmarks, extra_source_mattes: more views of the source
        person (EXTRA_SOURCE_NAMES; all or none): each view is encoded and warped to the driving
        pose by its own flow, and the warped volumes and moved heads are blended per voxel and
        pixel by models.fusion's weights. The source above stays the primary view: the output
        shows its background, body and, off the face, hair. The flows in the outputs are its.
      with_cycle: also warp the warped volume back (D -> S) for the cyclic warp loss.
      warp_only: skip renderer, inpainter and composite (training phase 1).

    Returns:
      dict with 'projected' (B, H/4, W/4, 3), 'flow' and 'flow_prior' (B, D, H/4, W/4, 3),
      'confidence' (B, D, H/4, W/4, 1), 'occlusion' (B, H/4, W/4, 1); with_cycle adds
      'projected_cycle' (B, H/4, W/4, 3); 'flow_2d' (B, H, W, 2) the head's image flow; unless
      warp_only: 'warped_source' (B, H, W, 3) and 'validity' (B, H, W, 1) (where the warped
      pixels are kept: off the source and unseen_mouth are not), 'unseen_mouth' (B, H, W, 1),
      'foreground',
      'background', 'inpainted' (the filled hole), 'output' (B, H, W, 3) and 'alpha'
      (B, H, W, 1). Images in [0, 1].
    """
    self._check_inputs(
      dict(
        source=source,
        source_landmarks=source_landmarks,
        driving_landmarks=driving_landmarks,
        source_mask=source_mask,
        source_matte=source_matte,
      ),
      dict(
        extra_sources=extra_sources,
        extra_source_landmarks=extra_source_landmarks,
        extra_source_mattes=extra_source_mattes,
      ),
    )
    # Every source view goes through the same encoder and flow network, as one batch of B K.
    images, landmarks, mattes = stacked_views(
      source,
      source_landmarks,
      source_matte,
      extra_sources,
      extra_source_landmarks,
      extra_source_mattes,
    )
    count = images.shape[0] // source.shape[0]
    to_views = jnp.repeat(driving_landmarks, count, axis=0) if count > 1 else driving_landmarks
    source_volume = self.encoder(images)
    size = source_volume.shape[2]
    heads, rests = person_parts(landmarks, mattes)
    stride = self.image_size // size
    prior = self._prior(landmarks, to_views, layers.downsample(heads, stride)[..., 0])
    flow, occlusion, visibility = self.flow_net(source_volume, prior.flow, prior.confidence)
    learned = flow - prior.flow
    visibility = visibility + self.visibility_sharpness * prior.confidence
    warped_volume = warp.warp_3d(source_volume, flow).astype(self.dtype)
    primary_volume = warped_volume
    weights = None
    if count > 1:
      logits, facing, confidence = fusion_logits(self, landmarks, to_views, prior.head_flow, count)
      if self.fusion_head:
        logits = logits + self.fusion(warped_volume, facing, confidence)
      weights = fusion.view_weights(logits, count)  # (B, K, D, h, w, 1)
      views_volume = by_view(warped_volume, count)
      primary_volume = views_volume[:, 0]
      warped_volume = jnp.sum(weights.astype(self.dtype) * views_volume, axis=1)
      seen = fusion.pixel_weights(weights, visibility, size, size)
      occlusion = jnp.sum(seen * by_view(occlusion, count), axis=1)

    primary = functools.partial(primary_view, count=count)

    projected_features, projected = self.projection(warped_volume)
    outputs = {
      'projected': projected,
      'flow': primary(flow),
      'flow_prior': primary(prior.flow).astype(jnp.float32),
      'confidence': primary(prior.confidence).astype(jnp.float32),
      'occlusion': occlusion,
    }
    if with_cycle:
      # Same flow network, roles swapped: the warped volume is now the "source", its head is the
      # source head moved by the flow, and the prior maps source space back into driving space.
      # With several views, the primary's own warped volume goes back to the primary source
      # (the fused one would hold the other views against it there).
      head_flow_small = geometry.project_flow(
        primary(prior.head_flow + learned), primary(visibility), size, size
      )
      driving_head = warp.warp_2d(primary(prior.source_head)[..., None], head_flow_small)[..., 0]
      reverse = self._prior(driving_landmarks, source_landmarks, driving_head)
      reverse_flow, _, _ = self.flow_net(primary_volume, reverse.flow, reverse.confidence)
      cycled_volume = warp.warp_3d(primary_volume, reverse_flow).astype(self.dtype)
      _, outputs['projected_cycle'] = self.projection(cycled_volume)
    flows_2d = image_flow(self, prior.head_flow + learned, visibility, landmarks, to_views)
    flow_2d = primary(flows_2d)
    if warp_only:
      # The image flow alone (no pixels moved), for the loss on pairs whose true motion is known.
      outputs['flow_2d'] = flow_2d
      return outputs
    views = None
    if count > 1:
      pixels = fusion.pixel_weights(weights, visibility, self.image_size, self.image_size)
      views = SourceViews(images, heads, rests, flows_2d, pixels)
    source_head, source_rest = primary(heads), primary(rests)
    hole = geometry.hole_of(source_matte)
    fill = background_fill(source, hole)
    warped = warp_person(
      source,
      source_head,
      source_rest,
      flow_2d,
      hole,
      fill,
      follows_head(self, driving_landmarks),
      views,
    )
    # The renderer keeps the warped pixels where they are valid: not off the source, and not
    # stretched lips across a mouth opened wider than the source's.
    unseen = unseen_mouth(source_landmarks, driving_landmarks, warped.flow_2d)
    validity = warped.validity * (1.0 - unseen)
    # The renderer paints the unseen mouth (validity 0), seeing the cavity's dark as a hint.
    warped_image = fill_mouth(warped.image, unseen)
    foreground, alpha = self.renderer(
      projected_features, occlusion, warped_image, validity, warped.person
    )
    if self.alpha_from_warp:
      # A briefly trained renderer's alpha trims the outline the warp already knows (a strip
      # of hair at the head's edge), and the face models read the face from its outline too.
      alpha = warped.alpha + (1.0 - warped.validity) * alpha
    if self.paint_from_warped:
      # The driving face (its oval, the unseen mouth in it) is always the person, never the
      # background: a renderer trained where invalid pixels are mostly off the person drops it.
      face = driving_face(driving_landmarks, self.image_size)
      alpha = jnp.maximum(alpha, jnp.maximum(face, unseen))
    filled = self.inpainter(source, hole, fill)
    background = composite_background(source, filled, hole, warped.still_rest, warped.head_motion)
    outputs.update(
      flow_2d=warped.flow_2d,
      warped_source=warped_image,
      validity=validity,
      unseen_mouth=unseen,
      foreground=foreground,
      alpha=alpha,
      background=background,
      inpainted=filled,
      output=alpha * foreground + (1.0 - alpha) * background,
    )
    return outputs


# Around the eyes the mesh flow takes over within this many eye widths of the eye landmarks
# (a Gaussian's radius; face_topology.EYE_MESH_RADIUS keeps the mesh wider than its reach).
EYE_REACH = 0.2


def eye_flow(
  generator: 'Generator', source_landmarks: jax.Array, driving_landmarks: jax.Array
) -> tuple[jax.Array, jax.Array] | None:
  """(flow (B, H, W, 2), weight (B, H, W, 1)) moving the eyes by their own landmarks, or None
  when generator.eye_mesh is off.

  The feature volume's grid (a quarter of the image) is coarser than an eyelid's gap, so the
  projected flow cannot close an eye or turn an iris. Near the eye landmarks (weight 1 on the
  eyes, fading over EYE_REACH eye widths) the piecewise-affine flow of the eye meshes
  (geometry.mesh_flow over face_topology.eye_triangles: the skin's where it covers a pixel, the
  opening's elsewhere) replaces it. Data only.
  """
  if not generator.eye_mesh:
    return None
  size = generator.image_size
  skin, opening = (
    geometry.mesh_flow(source_landmarks, driving_landmarks, triangles, height=size, width=size)
    for triangles in face_topology.eye_triangles()
  )
  # The skin wins where both cover a pixel: a closed lid hides the eyeball and iris.
  flow = jnp.where(skin[1] > 0, skin[0], opening[0])
  coverage = jnp.maximum(skin[1], opening[1])
  return flow, geometry.eye_zone(driving_landmarks, EYE_REACH, size, size) * coverage


# The mouth mesh takes over within this many mouth widths of the lip landmarks (a Gaussian's
# radius; face_topology.MOUTH_MESH_RADIUS keeps the mesh wider than its reach).
MOUTH_REACH = 0.12


def mouth_flow(
  generator: 'Generator', source_landmarks: jax.Array, driving_landmarks: jax.Array
) -> tuple[jax.Array, jax.Array] | None:
  """(flow (B, H, W, 2), weight (B, H, W, 1)) moving the mouth by its own landmarks, or None
  when generator.mouth_mesh is off.

  A smooth interpolation of the landmarks' motions stretches whatever lies between the lips
  when the mouth opens: the source's teeth become long fangs at the corners. Here the lips and
  the skin around them move by the piecewise-affine flow of their mesh
  (face_topology.mouth_triangles), and the opening between the driving lips by the head's rigid
  motion (geometry.rigid_flow_2d at the lips' depth): the upper teeth stay with the skull, the
  source's mouth interior keeps its size, and what it cannot fill is the unseen mouth
  (unseen_mouth), shown dark and painted by the renderer. The weight is 1 on the lips, fading
  over MOUTH_REACH mouth widths. Data only.
  """
  if not generator.mouth_mesh:
    return None
  size = generator.image_size
  skin, covered = geometry.mesh_flow(
    source_landmarks, driving_landmarks, face_topology.mouth_triangles(), height=size, width=size
  )
  driving = jax.lax.stop_gradient(jnp.asarray(driving_landmarks, jnp.float32))
  inner = face_topology.LIPS_INNER
  opening = geometry.polygon_mask(driving[:, inner, :2], size, size)[..., None]
  rigid = geometry.rigid_flow_2d(
    source_landmarks,
    driving_landmarks,
    generator.stable_indices,
    driving[:, inner, 2].mean(-1),
    size,
    size,
  )
  # The lips win where both cover a pixel: closed lips hide the teeth.
  flow = jnp.where(covered > 0, skin, rigid)
  coverage = jnp.maximum(covered, opening)
  corners = np.asarray(face_topology.MOUTH_CORNERS)
  mouth_width = jnp.linalg.norm(driving[:, corners[0], :2] - driving[:, corners[1], :2], axis=-1)
  near = geometry.near_landmarks(
    driving[:, face_topology.MOUTH_POINTS, :2], MOUTH_REACH * mouth_width, size, size
  )
  # The opening is the mouth's own, however far its centre is from the lips.
  return flow, jnp.maximum(near * coverage, opening)


def image_flow(
  generator: 'Generator',
  head_flow: jax.Array,
  visibility: jax.Array,
  source_landmarks: jax.Array,
  driving_landmarks: jax.Array,
) -> jax.Array:
  """The head's backward image flow (B, H, W, 2) at the image's size: the 3D head flow
  (B, D, h, w, 3) projected by `visibility` (geometry.project_flow), with eye_flow's and
  mouth_flow's flows where their weights are."""
  size = generator.image_size
  flow = geometry.project_flow(head_flow, visibility, size, size)
  for local in (eye_flow, mouth_flow):
    taken = local(generator, source_landmarks, driving_landmarks)
    if taken is not None:
      local_flow, weight = taken
      flow = (1.0 - weight) * flow + weight * local_flow
  return flow


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
  if m.volume_convs not in ('3d', '2+1d'):
    raise ValueError(f"model.volume_convs={m.volume_convs!r}; use '3d' or '2+1d'.")
  if m.volume_conv_lowering not in VOLUME_CONV_LOWERINGS:
    raise ValueError(
      f'model.volume_conv_lowering={m.volume_conv_lowering!r}; use one of {VOLUME_CONV_LOWERINGS}.'
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
    visibility_sharpness=float(m.visibility_sharpness),
    fusion_sharpness=float(m.fusion_sharpness),
    fusion_head=bool(m.fusion_head),
    eye_mesh=bool(m.eye_mesh),
    neck_follows=bool(m.neck_follows),
    mouth_mesh=bool(m.mouth_mesh),
    paint_from_warped=bool(m.paint_from_warped),
    alpha_from_warp=bool(m.alpha_from_warp),
    volume_convs=str(m.volume_convs),
    volume_conv_lowering=str(m.volume_conv_lowering),
    remat=bool(m.remat),
    dtype=layers.compute_dtype(m.compute_dtype),
  )


def example_inputs(
  generator: Generator, batch_size: int = 1, num_sources: int = 1
) -> dict[str, jax.Array]:
  """Zero inputs of the generator's shapes (INPUT_NAMES, and EXTRA_SOURCE_NAMES for
  num_sources > 1), for initialisation and lowering."""
  size, points = generator.image_size, generator.num_landmarks

  def zeros(*shape):
    return jnp.zeros(shape, jnp.float32)

  inputs = {
    'source': zeros(batch_size, size, size, 3),
    'source_landmarks': zeros(batch_size, points, 3),
    'driving_landmarks': zeros(batch_size, points, 3),
    'source_mask': zeros(batch_size, size, size, 1),
    'source_matte': zeros(batch_size, size, size, 1),
  }
  if num_sources > 1:
    views = num_sources - 1
    inputs['extra_sources'] = zeros(batch_size, views, size, size, 3)
    inputs['extra_source_landmarks'] = zeros(batch_size, views, points, 3)
    inputs['extra_source_mattes'] = zeros(batch_size, views, size, size, 1)
  return inputs


def init_params(generator: Generator, rng: jax.Array):
  """Fresh generator parameters (every part, the renderer and inpainter included; the fusion
  head when model.fusion_head)."""
  inputs = example_inputs(generator, num_sources=2 if generator.fusion_head else 1)
  return generator.init(rng, **inputs, with_cycle=True, warp_only=False)['params']


def generator_inputs(inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The generator's inputs in a batch: INPUT_NAMES, and EXTRA_SOURCE_NAMES when it has them."""
  names = INPUT_NAMES + (EXTRA_SOURCE_NAMES if EXTRA_SOURCE_NAMES[0] in inputs else ())
  return {name: inputs[name] for name in names}


def render(generator: Generator, params, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The inference forward pass (full renderer, no cycle): the dict of outputs.

  The one forward pass of the project: training images, evaluation, reenact, export and the
  benchmarks all call it (through inference.render_fn where it is compiled).

  Args:
    inputs: INPUT_NAMES (and optionally EXTRA_SOURCE_NAMES) -> arrays, see Generator.__call__.
  """
  return generator.apply(
    {'params': params}, **generator_inputs(inputs), with_cycle=False, warp_only=False
  )


def prior_render(generator: Generator, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The geometric prior alone, without any learned weight: the baseline a trained model must
  beat (`reenact --prior-only`).

  The source pixels moved by the prior's 2D flow (each pixel shows the depth slice the prior is
  most confident in; the eyes by their meshes, a mouth opened wider than the source's dark
  inside), the moved person (moved head over the unmoved rest) as alpha, over the
  push-pull fill of the source's background. Outputs as `render` ('output', 'foreground',
  'alpha', 'background', 'flow_2d', 'warped_source', 'validity').
  """
  source = inputs['source'].astype(jnp.float32)
  matte = inputs['source_matte'].astype(jnp.float32)
  images, landmarks, mattes = stacked_views(
    source,
    inputs['source_landmarks'],
    matte,
    *(inputs.get(name) for name in EXTRA_SOURCE_NAMES),
  )
  count = images.shape[0] // source.shape[0]
  driving = inputs['driving_landmarks']
  to_views = jnp.repeat(driving, count, axis=0) if count > 1 else driving
  heads, rests = person_parts(landmarks, mattes.astype(jnp.float32))
  prior = geometric_prior(
    landmarks,
    to_views,
    layers.downsample(heads, VOLUME_STRIDE)[..., 0],
    depth=generator.volume_depth,
    sigma=generator.landmark_sigma,
    stable_indices=generator.stable_indices,
  )
  visibility = generator.visibility_sharpness * prior.confidence
  flows_2d = image_flow(generator, prior.head_flow, visibility, landmarks, to_views)
  views = None
  if count > 1:
    logits, _, _ = fusion_logits(generator, landmarks, to_views, prior.head_flow, count)
    pixels = fusion.pixel_weights(
      fusion.view_weights(logits, count), visibility, generator.image_size, generator.image_size
    )
    views = SourceViews(images, heads, rests, flows_2d, pixels)
    flows_2d, heads, rests = (primary_view(x, count) for x in (flows_2d, heads, rests))
  hole = geometry.hole_of(matte)
  fill = background_fill(source, hole)
  warped = warp_person(
    source, heads, rests, flows_2d, hole, fill, follows_head(generator, driving), views
  )
  image = fill_mouth(
    warped.image,
    unseen_mouth(inputs['source_landmarks'], inputs['driving_landmarks'], warped.flow_2d),
  )
  alpha = warped.alpha
  return {
    'output': alpha * image + (1.0 - alpha) * warped.background,
    'foreground': image,
    'alpha': alpha,
    'background': warped.background,
    'flow_2d': warped.flow_2d,
    'warped_source': image,
    'validity': warped.validity,
  }
