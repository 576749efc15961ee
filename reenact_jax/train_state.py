"""The one PyTree that training carries from step to step, and the optimizers that update it."""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from reenact_jax import models

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that must be restored to resume a run exactly.

  The generator's parts have two optimiser states: the warp (models.WARP_PARTS: encoder, flow
  network, projection) trains from step 0, the rendering (models.RENDER_PARTS: renderer,
  inpainter) from the phase switch. A part that starts late gets a fresh Adam state, so its
  bias correction and warmup start with it (one shared state would give its first update ~16
  times the learning rate: moments at 0, bias correction at 1). The optimizers are static
  fields (not leaves): they are rebuilt from the config, and their states are the leaves that
  checkpoints carry.
  """

  step: jax.Array  # int32 scalar: number of optimizer steps taken.
  rng: jax.Array  # Base PRNG key; step keys are fold_in(rng, step).
  generator_params: PyTree
  warp_opt_state: PyTree
  render_opt_state: PyTree
  ema_params: PyTree  # Exponential moving average of generator_params (used for inference).
  discriminator_params: PyTree
  discriminator_stats: PyTree  # Spectral-norm power-iteration vectors ('batch_stats').
  discriminator_opt_state: PyTree
  warp_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  render_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  discriminator_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def split_generator(params: PyTree) -> tuple[PyTree, PyTree]:
  """(warp parts, render parts) of the generator's parameters (the warp parts it has)."""
  return (
    {name: params[name] for name in models.WARP_PARTS if name in params},
    {name: params[name] for name in models.RENDER_PARTS},
  )


def learning_rate_schedule(
  optim_config: ml_collections.ConfigDict, total_steps: int, peak: float, warmup: int
) -> optax.Schedule:
  """Linear warmup from peak / warmup to `peak`, then cosine decay to 0 at `total_steps` (or
  constant); steps count the optimiser's own updates."""
  warmup = max(int(warmup), 0)
  if optim_config.schedule == 'constant':
    after = optax.constant_schedule(peak)
  elif optim_config.schedule == 'cosine':
    after = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
  else:
    raise ValueError(
      f"config.optim.schedule={optim_config.schedule!r} is not one of 'cosine', 'constant'."
    )
  if warmup == 0:
    return after
  # Step 0 already moves the parameters (peak / warmup), so a run of a few steps trains.
  return optax.join_schedules(
    [optax.linear_schedule(peak / warmup, peak, warmup - 1), after], boundaries=[warmup]
  )


@dataclasses.dataclass(frozen=True)
class Optimizers:
  """The three optimisers of a run and their learning-rate schedules (for logging)."""

  warp: optax.GradientTransformation
  render: optax.GradientTransformation
  discriminator: optax.GradientTransformation
  warp_schedule: optax.Schedule
  render_schedule: optax.Schedule


def make_optimizers(config: ml_collections.ConfigDict) -> Optimizers:
  """Global-norm clipping, then Adam(b1, b2) with warmup and decay, for each group.

  The warp's schedule spans the run (optim.decay_steps or train.total_steps, warmup
  optim.warmup_steps); the renderer's, inpainter's and discriminator's span phase 2 (warmup
  optim.phase2_warmup_steps), counted from the phase switch.
  """
  optim = config.optim
  total = optim.decay_steps or config.train.total_steps
  phase2 = max(total - config.train.phase1_steps, 1)

  def adam(schedule):
    return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.adam(schedule, b1=optim.b1, b2=optim.b2),
    )

  warp_schedule = learning_rate_schedule(optim, total, optim.generator_lr, optim.warmup_steps)
  render_schedule = learning_rate_schedule(
    optim, phase2, optim.generator_lr, optim.phase2_warmup_steps
  )
  discriminator_schedule = learning_rate_schedule(
    optim, phase2, optim.discriminator_lr, optim.phase2_warmup_steps
  )
  return Optimizers(
    warp=adam(warp_schedule),
    render=adam(render_schedule),
    discriminator=adam(discriminator_schedule),
    warp_schedule=warp_schedule,
    render_schedule=render_schedule,
  )


def create(
  *,
  rng: jax.Array,
  generator_params: PyTree,
  discriminator_variables: PyTree,
  optimizers: Optimizers,
) -> TrainState:
  discriminator_params = discriminator_variables['params']
  warp_params, render_params = split_generator(generator_params)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    rng=rng,
    generator_params=generator_params,
    warp_opt_state=optimizers.warp.init(warp_params),
    render_opt_state=optimizers.render.init(render_params),
    ema_params=jax.tree.map(jnp.copy, generator_params),
    discriminator_params=discriminator_params,
    discriminator_stats=discriminator_variables.get('batch_stats', {}),
    discriminator_opt_state=optimizers.discriminator.init(discriminator_params),
    warp_tx=optimizers.warp,
    render_tx=optimizers.render,
    discriminator_tx=optimizers.discriminator,
  )


def update_ema(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
