"""Load a trained generator (EMA weights) from a run directory, for reenact / evaluate / export.

The config is read from the checkpoint itself, so a user needs only the workdir.
"""

import dataclasses
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from configs import base
from reenact_jax import checkpointing, models


class CheckpointNotFoundError(FileNotFoundError):
  pass


def _tuples(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """The run's config: base defaults updated with what the checkpoint recorded."""
  config = base.get_config()
  config.update_from_flattened_dict(_flatten(_tuples(saved)))
  return config


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


@dataclasses.dataclass
class LoadedGenerator:
  config: ml_collections.ConfigDict
  generator: Any  # models.Generator
  params: Any  # EMA generator params, on the first local device
  step: int

  @functools.cached_property
  def render(self):
    """jitted (params, source, source_landmarks, driving_landmarks, source_mask) -> outputs."""

    def render(params, source, source_landmarks, driving_landmarks, source_mask):
      return models.render(
        self.generator, params, source, source_landmarks, driving_landmarks, source_mask
      )

    return jax.jit(render)

  def __call__(self, source, source_landmarks, driving_landmarks, source_mask):
    return self.render(self.params, source, source_landmarks, driving_landmarks, source_mask)


def load_generator(workdir: str, step: int | None = None) -> LoadedGenerator:
  """The EMA generator of the newest (or the given) checkpoint in WORKDIR/checkpoints."""
  directory = epath.Path(workdir) / 'checkpoints'
  if not directory.exists():
    raise CheckpointNotFoundError(
      f'No checkpoints in {directory}. Train first: python -m reenact_jax.train '
      f'--config=configs/demo.py --workdir={workdir}'
    )
  manager = ocp.CheckpointManager(
    directory.absolute(),
    options=ocp.CheckpointManagerOptions(read_only=True),
    item_names=('state', 'data', 'config'),
  )
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
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    try:
      config = config_from_json(saved['config'])
    except (KeyError, TypeError, ValueError) as error:
      raise checkpointing.IncompatibleCheckpointError(
        f'The checkpoint in {directory} was written with a config this version of reenact_jax '
        f'does not know ({type(error).__name__}: {error}). Use the reenact_jax version that '
        'trained it.'
      ) from error
    # The whole state onto one local device; only the EMA parameters are kept.
    from reenact_jax import sharding, trainer

    config.mesh.data, config.mesh.fsdp = 1, 1
    setup = trainer.Setup(
      config,
      mesh=sharding.make_mesh(config.mesh, devices=jax.local_devices()[:1]),
      with_losses=False,
    )
    abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    state, _ = checkpointing.restore(manager, step, abstract, config)
  finally:
    manager.close()
  # On the first local device once, not re-uploaded with every call.
  params = jax.device_put(state.ema_params, jax.local_devices()[0])
  return LoadedGenerator(config=config, generator=setup.generator, params=params, step=int(step))


def batched(items: Iterable, size: int) -> Iterator[list]:
  """Consecutive lists of `size` items (the last one shorter)."""
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch
