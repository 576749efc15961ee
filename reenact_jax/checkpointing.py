"""Checkpoints: model state, data-iterator position and config together, under WORKDIR/checkpoints.

One orbax CheckpointManager with three items per step:
  'state'  the TrainState leaves (as a state dict), sharded arrays saved asynchronously;
  'data'   the grain iterator state (JSON), so a resumed run continues the same data order;
  'config' the run's config (JSON), used to refuse a checkpoint from an incompatible config.
"""

import json
import logging
from typing import Any

import flax.serialization
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

# Config sections that decide the shapes of the state: a checkpoint is only compatible with a
# config that agrees on all of them.
SHAPE_KEYS = ('image_size', 'model')
# Sections that decide the data order and the optimisation; a change is allowed but logged.
ORDER_KEYS = ('seed', 'train', 'data', 'optim', 'loss', 'mesh')
# Changing these on resume is the normal way to continue or inspect a run.
RESUMABLE_KEYS = {
  'train.total_steps',
  'train.log_every',
  'train.image_log_every',
  'train.checkpoint_every',
  'train.max_to_keep',
  'train.eval_every',
  'train.compilation_cache_dir',
  'train.local_log_dir',
  'data.num_workers',
  'data.num_threads',
  'data.prefetch',
  'data.dir',
  'data.cache_dir',
  'mesh.data',
  'mesh.fsdp',
  'mesh.param_rules',
  'mesh.fsdp_min_size',
}


class IncompatibleCheckpointError(ValueError):
  pass


def make_manager(workdir: str, *, max_to_keep: int, async_save: bool = True):
  directory = epath.Path(workdir) / 'checkpoints'
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    enable_async_checkpointing=async_save,
    create=True,
  )
  return ocp.CheckpointManager(
    directory.absolute(), options=options, item_names=('state', 'data', 'config')
  )


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def save(manager, step: int, state, data_state: dict[str, Any] | None, config) -> None:
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
      data=ocp.args.JsonSave(data_state or {}),
      config=ocp.args.JsonSave(config_to_json(config)),
    ),
  )


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f'{prefix}{key}.'))
    return flat
  return {prefix[:-1]: tuple(tree) if isinstance(tree, list) else tree}


def check_compatible(saved_config: dict[str, Any], config, checkpoint_dir: str) -> None:
  """Raise IncompatibleCheckpointError naming every shape-deciding key that differs."""
  current = config_to_json(config)
  differences = []
  for section in SHAPE_KEYS:
    saved = _flatten({section: saved_config.get(section)})
    now = _flatten({section: current.get(section)})
    for key in sorted(set(saved) | set(now)):
      if key.startswith('model.compute_dtype') or key.startswith('model.remat'):
        continue  # Changing precision or rematerialisation keeps every shape.
      if saved.get(key) != now.get(key):
        differences.append(f'{key}: checkpoint {saved.get(key)!r}, config {now.get(key)!r}')
  order_changes = []
  for section in ORDER_KEYS:
    saved = _flatten({section: saved_config.get(section)})
    now = _flatten({section: current.get(section)})
    order_changes += [
      f'{key}: {saved.get(key)!r} -> {now.get(key)!r}'
      for key in sorted(set(saved) | set(now))
      if saved.get(key) != now.get(key) and key not in RESUMABLE_KEYS
    ]
  optim = current.get('optim', {})
  if (
    saved_config.get('train', {}).get('total_steps') != current['train']['total_steps']
    and optim.get('schedule') == 'cosine'
    and not optim.get('decay_steps')
  ):
    order_changes.append(
      'train.total_steps changes the cosine schedule (set optim.decay_steps to keep it)'
    )
  if order_changes:
    logging.warning(
      'Resuming with settings that change the data stream or the schedule, so the run will not '
      'continue exactly as it would have: %s',
      '; '.join(order_changes),
    )
  if differences:
    raise IncompatibleCheckpointError(
      f'The checkpoint in {checkpoint_dir} was written with another model configuration:\n  '
      + '\n  '.join(differences)
      + '\nResume with the configuration it was trained with, or start a new run in another '
      '--workdir.'
    )


def restore(manager, step: int, abstract_state, config) -> tuple[Any, dict[str, Any]]:
  """Restore (state, data_state) at `step` onto the shardings of `abstract_state`."""
  directory = str(manager.directory)
  saved_config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  check_compatible(saved_config['config'], config, directory)
  target = flax.serialization.to_state_dict(abstract_state)
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
    )
  except (ValueError, KeyError, TypeError) as error:
    raise IncompatibleCheckpointError(
      f'The checkpoint at step {step} in {directory} does not match the state this code '
      f'builds ({type(error).__name__}: {str(error)[:500]}). It was probably written by another '
      'version of reenact_jax; start a new run in another --workdir.'
    ) from error
  state = flax.serialization.from_state_dict(abstract_state, restored['state'])
  logging.info('Restored step %d from %s.', step, directory)
  return state, restored['data']


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
    abstract_state,
    shardings,
  )
