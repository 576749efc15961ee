"""A trained generator for inference: the EMA weights of a run's checkpoint, and the one compiled
forward pass that training images, evaluation, reenact, export and the benchmarks all run.

The config is read from the checkpoint itself, so a user needs only the workdir; only the EMA
generator parameters are read from it (orbax partial restore), not the optimiser states or the
discriminator.
"""

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
from etils import epath

from reenact_jax import checkpointing, models


class CheckpointNotFoundError(FileNotFoundError):
  pass


@functools.lru_cache(maxsize=8)
def render_fn(generator: models.Generator, out_sharding: Any = None, *, prior_only: bool = False):
  """`models.render` compiled: (params, inputs dict) -> outputs dict (see models.render).

  prior_only: `models.prior_render` instead (the geometric prior alone; params are ignored).
  """
  if prior_only:
    prior = lambda params, inputs: models.prior_render(generator, inputs)
    return jax.jit(prior, out_shardings=out_sharding)
  return jax.jit(functools.partial(models.render, generator), out_shardings=out_sharding)


@dataclasses.dataclass
class LoadedGenerator:
  config: ml_collections.ConfigDict
  generator: models.Generator
  params: Any  # EMA generator params, on the first local device.
  step: int

  def __call__(self, inputs: dict[str, Any]) -> dict[str, jax.Array]:
    """The generator's outputs for a batch of inputs (models.INPUT_NAMES, host or device)."""
    return render_fn(self.generator)(self.params, inputs)


@dataclasses.dataclass
class CheckpointRenderer:
  """What reenact renders with from a checkpoint: its EMA generator, or its geometric prior alone
  (prior_only: the run's sizes, none of its weights)."""

  config: ml_collections.ConfigDict  # The run's config.
  generator: models.Generator
  params: Any  # The EMA parameters (unused by the prior alone).
  step: int  # The checkpoint's step.
  prior_only: bool

  @property
  def image_size(self) -> int:
    return int(self.config.image_size)

  @property
  def num_landmarks(self) -> int:
    return int(self.config.model.num_landmarks)

  def render(self, inputs: dict[str, Any]) -> dict[str, jax.Array]:
    """models.INPUT_NAMES -> outputs ('output', 'alpha', ...), compiled once per shape."""
    return render_fn(self.generator, prior_only=self.prior_only)(self.params, inputs)


def load_generator(workdir: str, step: int | None = None) -> LoadedGenerator:
  """The EMA generator of the newest (or the given) checkpoint in WORKDIR/checkpoints.

  Raises:
    CheckpointNotFoundError: no (such) checkpoint.
    checkpointing.IncompatibleCheckpointError: the checkpoint does not fit this code.
  """
  directory = epath.Path(workdir) / 'checkpoints'
  if not directory.exists():
    raise CheckpointNotFoundError(
      f'No checkpoints in {directory}. Train first: python -m reenact_jax.train '
      f'--config=configs/demo.py --workdir={workdir}'
    )
  manager = checkpointing.make_manager(str(workdir), read_only=True)
  try:
    steps = manager.all_steps()
    if not steps:
      raise CheckpointNotFoundError(f'{directory} holds no finished checkpoint.')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise CheckpointNotFoundError(
        f'No checkpoint for step {step} in {directory}; available steps: {sorted(steps)}.'
      )
    config = checkpointing.read_saved_config(manager, step)
    generator = models.make_generator(config.model, config.image_size)
    abstract = jax.eval_shape(functools.partial(models.init_params, generator), jax.random.key(0))
    params = checkpointing.restore_ema_params(manager, step, abstract)
  finally:
    manager.close()
  # On the first local device once, not re-uploaded with every call.
  params = jax.device_put(params, jax.local_devices()[0])
  return LoadedGenerator(config=config, generator=generator, params=params, step=int(step))
