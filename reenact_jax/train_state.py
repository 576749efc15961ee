"""The one PyTree that training carries from step to step, and the optimizers that update it."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that must be restored to resume a run exactly.

  The optimizers are static fields (not leaves): they are rebuilt from the config, and their
  states (`*_opt_state`) are the leaves that checkpoints carry.
  """

  step: jax.Array  # int32 scalar: number of optimizer steps taken.
  rng: jax.Array  # Base PRNG key; step keys are fold_in(rng, step).
  generator_params: PyTree
  generator_opt_state: PyTree
  ema_params: PyTree  # Exponential moving average of generator_params (used for inference).
  discriminator_params: PyTree
  discriminator_stats: PyTree  # Spectral-norm power-iteration vectors ('batch_stats').
  discriminator_opt_state: PyTree
  generator_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  discriminator_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def learning_rate_schedule(
  optim_config: ml_collections.ConfigDict, total_steps: int, peak: float
) -> optax.Schedule:
  """Linear warmup from peak / warmup_steps to `peak`, then cosine decay to 0 at `total_steps`
  (or constant)."""
  warmup = max(int(optim_config.warmup_steps), 0)
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


def make_optimizer(
  optim_config: ml_collections.ConfigDict, total_steps: int, peak: float
) -> optax.GradientTransformation:
  """Global-norm clipping, then Adam(b1, b2) with the warmup/decay schedule."""
  return optax.chain(
    optax.clip_by_global_norm(optim_config.grad_clip_norm),
    optax.adam(
      learning_rate_schedule(optim_config, total_steps, peak),
      b1=optim_config.b1,
      b2=optim_config.b2,
    ),
  )


def create(
  *,
  rng: jax.Array,
  generator_params: PyTree,
  discriminator_variables: PyTree,
  generator_tx: optax.GradientTransformation,
  discriminator_tx: optax.GradientTransformation,
) -> TrainState:
  discriminator_params = discriminator_variables['params']
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    rng=rng,
    generator_params=generator_params,
    generator_opt_state=generator_tx.init(generator_params),
    ema_params=jax.tree.map(jnp.copy, generator_params),
    discriminator_params=discriminator_params,
    discriminator_stats=discriminator_variables.get('batch_stats', {}),
    discriminator_opt_state=discriminator_tx.init(discriminator_params),
    generator_tx=generator_tx,
    discriminator_tx=discriminator_tx,
  )


def update_ema(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
