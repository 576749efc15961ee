"""Pure, module-level train and eval steps.

Every argument after `*` is static (modules, loss weights, phase): `trainer.py` binds them with
`functools.partial` before `jax.jit`, so the config is read once, outside jit.

Batch layout (global arrays, batch dimension sharded over the mesh):
  'source', 'driving': (B, H, W, 3) float32 in [0, 1]
  'source_landmarks', 'driving_landmarks': (B, N, 3) float32, normalised (see geometry.py)
  'source_mask', 'driving_mask': (B, H, W, 1) float32 in {0, 1}, face ovals
  'source_matte', 'driving_matte': (B, H, W, 1) float32 in [0, 1], person mattes
  'driving_flow': (B, H, W, 2) float32, the true backward flow where it is known
  'flow_known': (B,) float32, 1 for the pairs whose driving_flow is known (pseudo-pairs,
    synthetic clips), else 0
  'source_occluder': (B, H, W, 1) float32, a synthetic occluder pasted on the source (training
    augmentation), else zeros
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from reenact_jax import geometry, losses, models, warp
from reenact_jax import train_state as train_state_lib

PyTree = Any
PerceptualFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]

# Logged in every phase, so that every metrics line has the same keys (0 where a term is not
# part of the phase's objective; the `phase` key says which phase it was).
GENERATOR_TERMS = (
  'flow',
  'cyclic_warp',
  'cyclic_forward',
  'cyclic_backward',
  'perceptual_projected',
  'perceptual',
  'l1',
  'keep_source',
  'alpha',
  'inpaint',
  'gan_g',
  'feature_matching',
)


@dataclasses.dataclass(frozen=True)
class LossWeights:
  flow: float
  cyclic_warp: float
  cyclic_backward: float
  cyclic_face: float
  perceptual: float
  perceptual_projected: float
  l1: float
  keep_source: float
  alpha: float
  inpaint: float
  gan: float
  feature_matching: float

  @classmethod
  def from_config(cls, loss_config: ml_collections.ConfigDict) -> 'LossWeights':
    return cls(**{f.name: float(loss_config[f.name]) for f in dataclasses.fields(cls)})

  @property
  def adversarial(self) -> bool:
    """Whether the discriminator takes part (with both weights 0 it is neither run nor trained)."""
    return bool(self.gan or self.feature_matching)


def _generator_losses(
  generator_params: PyTree,
  discriminator_variables: PyTree,
  perceptual_params: PyTree,
  batch: dict[str, jax.Array],
  *,
  generator: nn.Module,
  discriminator: nn.Module,
  perceptual_fn: PerceptualFn,
  weights: LossWeights,
  warp_only: bool,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, jax.Array]]]:
  outputs = generator.apply(
    {'params': generator_params},
    **models.generator_inputs(batch),
    with_cycle=True,
    warp_only=warp_only,
  )
  terms = {name: jnp.zeros((), jnp.float32) for name in GENERATOR_TERMS}
  forward, backward = losses.cyclic_warp(
    projected=outputs['projected'],
    projected_cycle=outputs['projected_cycle'],
    source=batch['source'],
    driving=batch['driving'],
    source_weight=losses.person_weight(
      matte=batch['source_matte'], mask=batch['source_mask'], face_weight=weights.cyclic_face
    ),
    driving_weight=losses.person_weight(
      matte=batch['driving_matte'], mask=batch['driving_mask'], face_weight=weights.cyclic_face
    ),
  )
  terms['cyclic_forward'] = forward
  terms['cyclic_backward'] = backward
  terms['cyclic_warp'] = forward + weights.cyclic_backward * backward
  height, width = outputs['projected'].shape[1:3]
  terms['perceptual_projected'] = perceptual_fn(
    perceptual_params, outputs['projected'], losses.resize_to(batch['driving'], height, width)
  )
  terms['flow'] = losses.flow_error(
    flow=outputs['flow_2d'],
    target=batch['driving_flow'],
    weight=batch['flow_known'][:, None, None, None] * batch['driving_mask'],
  )
  total = weights.cyclic_warp * terms['cyclic_warp']
  total += weights.flow * terms['flow']
  total += weights.perceptual_projected * terms['perceptual_projected']

  if not warp_only:
    output = outputs['output']
    unsupervised = losses.unsupervised_mouth(
      unseen_mouth=outputs['unseen_mouth'], made_pair=batch['flow_known']
    )
    target = losses.reconstruction_target(
      driving=batch['driving'], output=output, unsupervised=unsupervised
    )
    terms['perceptual'] = perceptual_fn(perceptual_params, output, target)
    # A weight, not the target: |output - output| would still pass abs's subgradient (1) at 0.
    terms['l1'] = losses.l1(prediction=output, target=batch['driving'], weight=1.0 - unsupervised)
    # The renderer keeps the source's own pixels on the face where the warp reaches them, so
    # that it paints only what the warp cannot show (a minutes-trained renderer paints blurred).
    terms['keep_source'] = losses.weighted_l1(
      prediction=outputs['foreground'],
      target=jax.lax.stop_gradient(outputs['warped_source']),
      weight=losses.keep_source_weight(
        validity=outputs['validity'],
        driving_mask=batch['driving_mask'],
        # No gradient to the flow: it must not learn to move the footprint onto what it gets
        # wrong (weighted_l1 divides by the weights), as with the unseen mouth.
        moved_occluder=warp.warp_2d(
          batch['source_occluder'], jax.lax.stop_gradient(outputs['flow_2d'])
        ),
      ),
    )
    terms['alpha'] = losses.alpha_matte(alpha=outputs['alpha'], matte=batch['driving_matte'])
    terms['inpaint'] = losses.inpaint(
      background=outputs['inpainted'],
      driving=batch['driving'],
      hole=geometry.hole_of(batch['source_matte']),
      # Grown like the hole: a fringe of hair the driving matte misses is not background.
      driving_matte=geometry.hole_of(batch['driving_matte']),
    )
    if weights.adversarial:
      fake = discriminator.apply(discriminator_variables, output, update_stats=False)
      real = discriminator.apply(discriminator_variables, batch['driving'], update_stats=False)
      terms['gan_g'] = losses.hinge_generator(fake_logits=[logits for _, logits in fake])
      terms['feature_matching'] = losses.feature_matching(
        real_features=[features for features, _ in real],
        fake_features=[features for features, _ in fake],
      )
    total += weights.perceptual * terms['perceptual']
    total += weights.l1 * terms['l1']
    total += weights.keep_source * terms['keep_source']
    total += weights.alpha * terms['alpha']
    total += weights.inpaint * terms['inpaint']
    total += weights.gan * terms['gan_g']
    total += weights.feature_matching * terms['feature_matching']
  terms['total'] = total
  return total, (terms, outputs)


def _discriminator_loss(
  discriminator_params: PyTree,
  discriminator_stats: PyTree,
  real: jax.Array,
  fake: jax.Array,
  *,
  discriminator: nn.Module,
) -> tuple[jax.Array, PyTree]:
  variables = {'params': discriminator_params, 'batch_stats': discriminator_stats}
  real_out, updated = discriminator.apply(
    variables, real, update_stats=True, mutable=['batch_stats']
  )
  variables = {'params': discriminator_params, 'batch_stats': updated['batch_stats']}
  fake_out = discriminator.apply(variables, fake, update_stats=False)
  loss = losses.hinge_discriminator(
    real_logits=[logits for _, logits in real_out],
    fake_logits=[logits for _, logits in fake_out],
  )
  return loss, updated['batch_stats']


def _tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def split_micro_batches(
  batch: dict[str, jax.Array], num: int, sharding: jax.sharding.Sharding | None
) -> dict[str, jax.Array]:
  """(B, ...) -> (num, B / num, ...): micro-batch j holds examples j, j + num, j + 2 num, ...

  Interleaved, so that every device keeps its own examples: a device's contiguous block of the
  batch is split locally, and each micro-batch stays sharded over the whole mesh (`sharding`
  is the batch sharding with a leading unsharded axis), with no communication.
  """

  def split(x):
    x = jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

  return jax.tree.map(split, batch)


def _accumulate(step_fn, micro_batches: PyTree, init: PyTree, num: int) -> tuple[PyTree, PyTree]:
  """Runs step_fn(micro_batch, extra) -> ((values, extra), output) over the leading axis of
  `micro_batches` with lax.scan (activation memory of one micro-batch) and returns ((summed
  values / num, extra), stacked outputs).

  With num = 1 the body runs once, outside any loop: XLA:CPU runs the convolutions of a while
  loop's body several times slower (measured on the demo step: 6.6 s instead of 1.3 s).
  """

  def body(carry, micro_batch):
    summed, extra = carry
    (values, extra), output = step_fn(micro_batch, extra)
    return (_tree_add(summed, values), extra), output

  if num == 1:
    carry, output = body(init, jax.tree.map(lambda x: x[0], micro_batches))
    (summed, extra), outputs = carry, jax.tree.map(lambda x: x[None], output)
  else:
    (summed, extra), outputs = jax.lax.scan(body, init, micro_batches)
  return (jax.tree.map(lambda x: x / num, summed), extra), outputs


def generator_update(
  state: train_state_lib.TrainState,
  micro_batches: dict[str, jax.Array],
  perceptual_params: PyTree,
  *,
  generator: nn.Module,
  discriminator: nn.Module,
  perceptual_fn: PerceptualFn,
  weights: LossWeights,
  ema_decay: float,
  warp_only: bool,
) -> tuple[train_state_lib.TrainState, dict[str, jax.Array], jax.Array | None]:
  """One Adam step of the generator on the mean gradient over the micro-batches (k, B/k, ...).

  Returns the new state, the loss terms (micro-batch means), the gradient norm and the
  generated images (k, B/k, H, W, 3) for the discriminator (None in phase 1).
  """
  num = jax.tree.leaves(micro_batches)[0].shape[0]
  discriminator_variables = {
    'params': state.discriminator_params,
    'batch_stats': state.discriminator_stats,
  }
  grad_fn = jax.value_and_grad(
    functools.partial(
      _generator_losses,
      generator=generator,
      discriminator=discriminator,
      perceptual_fn=perceptual_fn,
      weights=weights,
      warp_only=warp_only,
    ),
    has_aux=True,
  )

  def micro_step(micro_batch, unused):
    (_, (terms, outputs)), grads = grad_fn(
      state.generator_params, discriminator_variables, perceptual_params, micro_batch
    )
    fake = None if warp_only else jax.lax.stop_gradient(outputs['output'])
    return ((terms, grads), unused), fake

  zeros = (
    {name: jnp.zeros((), jnp.float32) for name in (*GENERATOR_TERMS, 'total')},
    jax.tree.map(jnp.zeros_like, state.generator_params),
  )
  ((terms, grads), _), fake = _accumulate(micro_step, micro_batches, (zeros, ()), num)
  warp_params, render_params = train_state_lib.split_generator(state.generator_params)
  warp_grads, render_grads = train_state_lib.split_generator(grads)
  updates, warp_opt_state = state.warp_tx.update(warp_grads, state.warp_opt_state, warp_params)
  warp_params = optax.apply_updates(warp_params, updates)
  render_opt_state = state.render_opt_state
  if not warp_only:  # The renderer's optimiser starts (count 0) at the phase switch.
    updates, render_opt_state = state.render_tx.update(
      render_grads, state.render_opt_state, render_params
    )
    render_params = optax.apply_updates(render_params, updates)
  params = {**warp_params, **render_params}
  state = state.replace(
    generator_params=params,
    warp_opt_state=warp_opt_state,
    render_opt_state=render_opt_state,
    ema_params=train_state_lib.update_ema(state.ema_params, params, ema_decay),
  )
  return state, terms, optax.tree.norm(grads), fake


def discriminator_update(
  state: train_state_lib.TrainState,
  real: jax.Array,
  fake: jax.Array,
  *,
  discriminator: nn.Module,
) -> tuple[train_state_lib.TrainState, jax.Array, jax.Array]:
  """One Adam step of the discriminator on real and generated micro-batches (k, B/k, H, W, 3).

  The spectral-norm power iteration runs once per micro-batch. Returns the new state, the hinge
  loss (micro-batch mean) and the gradient norm.
  """
  num = real.shape[0]
  grad_fn = jax.value_and_grad(
    functools.partial(_discriminator_loss, discriminator=discriminator), has_aux=True
  )

  def micro_step(images, stats):
    (loss, stats), grads = grad_fn(state.discriminator_params, stats, *images)
    return ((loss, grads), stats), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.discriminator_params))
  ((loss, grads), stats), _ = _accumulate(
    micro_step, (real, fake), (zeros, state.discriminator_stats), num
  )
  updates, opt_state = state.discriminator_tx.update(
    grads, state.discriminator_opt_state, state.discriminator_params
  )
  state = state.replace(
    discriminator_params=optax.apply_updates(state.discriminator_params, updates),
    discriminator_stats=stats,
    discriminator_opt_state=opt_state,
  )
  return state, loss, optax.tree.norm(grads)


def train_step(
  state: train_state_lib.TrainState,
  batch: dict[str, jax.Array],
  perceptual_params: PyTree,
  *,
  generator: nn.Module,
  discriminator: nn.Module,
  perceptual_fn: PerceptualFn,
  weights: LossWeights,
  ema_decay: float,
  warp_only: bool,
  grad_accum_steps: int = 1,
  micro_batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[train_state_lib.TrainState, dict[str, jax.Array]]:
  """One optimisation step of generator (and, unless warp_only, discriminator).

  warp_only=True is phase 1: only the cyclic warp loss and the perceptual loss on the projected
  RGB are optimised (the encoder, flow network and projection get gradients; the renderer,
  inpainter and discriminator do not change). warp_only=False is phase 2: every loss.

  The batch is split into grad_accum_steps = k micro-batches (`split_micro_batches`), run one
  after the other (activation memory of one micro-batch), and the mean of their gradients is
  applied in one optimizer update; k = 1 is the whole batch at once. Losses that are means over
  the batch give the same step for every k up to how masked means weigh examples.

  Returns the new state and a dict of float32 scalars: 'loss/<term>' for every term,
  'grad_norm/generator', 'grad_norm/discriminator', 'phase'.
  """
  micro_batches = split_micro_batches(batch, grad_accum_steps, micro_batch_sharding)
  state, terms, generator_grad_norm, fake = generator_update(
    state,
    micro_batches,
    perceptual_params,
    generator=generator,
    discriminator=discriminator,
    perceptual_fn=perceptual_fn,
    weights=weights,
    ema_decay=ema_decay,
    warp_only=warp_only,
  )
  discriminator_loss = jnp.zeros((), jnp.float32)
  discriminator_grad_norm = jnp.zeros((), jnp.float32)
  if not warp_only and weights.adversarial:
    state, discriminator_loss, discriminator_grad_norm = discriminator_update(
      state, micro_batches['driving'], fake, discriminator=discriminator
    )
  metrics = {f'loss/{name}': value for name, value in terms.items()}
  metrics['loss/disc'] = discriminator_loss
  metrics['grad_norm/generator'] = generator_grad_norm
  metrics['grad_norm/discriminator'] = discriminator_grad_norm
  metrics['phase'] = jnp.asarray(1.0 if warp_only else 2.0, jnp.float32)
  return state.replace(step=state.step + 1), metrics


def render_step(
  generator_params: PyTree,
  batch: dict[str, jax.Array],
  *,
  generator: nn.Module,
) -> dict[str, jax.Array]:
  """Forward pass for the training image grids: the generator's images, (B, H, W, 3) each."""
  outputs = models.render(generator, generator_params, batch)
  height, width = batch['source'].shape[1:3]
  projected = jax.image.resize(
    outputs['projected'], outputs['projected'].shape[:1] + (height, width, 3), 'nearest'
  )
  return {
    'source': batch['source'],
    'driving': batch['driving'],
    'projected': projected,
    'warped': outputs['warped_source'],
    'foreground': outputs['foreground'] * outputs['alpha'],
    'background': outputs['background'],
    'output': outputs['output'],
  }
