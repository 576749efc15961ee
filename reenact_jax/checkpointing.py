"""Checkpoints: model state, data-iterator position and config together, under WORKDIR/checkpoints.

One orbax CheckpointManager with three items per step:
  'state'  the TrainState leaves (as a state dict), sharded arrays saved asynchronously;
  'data'   the grain iterator state (JSON), so a resumed run continues the same data order;
  'config' the run's config (JSON), used to refuse a checkpoint from an incompatible config.
"""

import json
import logging
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from reenact_jax import cli, distributed

# Config sections that decide the shapes of the state: a checkpoint is only compatible with a
# config that agrees on all of them.
SHAPE_KEYS = ('image_size', 'model')
# Keys added after runs were saved without them, and the value such a run behaves as (its code
# had no such key). A saved config is read with them filled in (with_added_keys), so the run
# renders as it was trained and resumes with that value (e.g. --config.model.eye_mesh=False).
ADDED_KEYS = {
  'model.eye_mesh': False,
  'model.mouth_mesh': False,
  'model.neck_follows': False,
  'model.paint_from_warped': False,
  'model.alpha_from_warp': False,
  'model.volume_conv_lowering': 'xla',
  'model.fusion_sharpness': 8.0,
  'model.fusion_head': False,
  'data.num_sources': 1,
}
# Model keys that change how the model runs, not its parameters: free to change on resume.
SHAPE_FREE_MODEL_KEYS = frozenset(
  {'model.compute_dtype', 'model.remat', 'model.volume_conv_lowering', 'model.fusion_sharpness'}
)
# Sections that decide the data order and the optimisation; a change is allowed but logged.
ORDER_KEYS = ('seed', 'train', 'data', 'optim', 'loss', 'mesh')
# The training loop's own settings: how long, how often to log, save and evaluate, where to.
LOOP_KEYS = frozenset(
  {
    'total_steps',
    'train.total_steps',
    'train.log_every',
    'train.image_log_every',
    'train.checkpoint_every',
    'train.max_to_keep',
    'train.eval_every',
    'train.compilation_cache_dir',
    'train.local_log_dir',
  }
)
# Changing these on resume is the normal way to continue or inspect a run.
RESUMABLE_KEYS = LOOP_KEYS | {
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
  """A readable checkpoint of another model: resuming or loading it cannot work."""


class CorruptCheckpointError(ValueError):
  """A checkpoint whose files cannot be read (truncated, missing, garbled)."""


ITEMS = ('state', 'data', 'config')


def make_manager(
  workdir: str, *, max_to_keep: int = 1, async_save: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
  """The run's CheckpointManager over WORKDIR/checkpoints (read_only: for inference)."""
  directory = epath.Path(workdir) / 'checkpoints'
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
    )
  return ocp.CheckpointManager(directory.absolute(), options=options, item_names=ITEMS)


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


def _flatten(tree: dict[str, Any]) -> dict[str, Any]:
  """{'model.encoder_channels': (64, 128, 256), ...}: dotted keys, lists as tuples."""
  flat = traverse_util.flatten_dict(tree, sep='.')
  return {key: tuple(value) if isinstance(value, list) else value for key, value in flat.items()}


def _tuples(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def with_added_keys(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config (as JSON) with each of ADDED_KEYS it lacks set to the value its run had."""
  saved = json.loads(json.dumps(saved))  # A copy: the caller's dict stays as saved.
  for key, value in ADDED_KEYS.items():
    *sections, name = key.split('.')
    node = saved
    for section in sections:
      node = node.get(section) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.setdefault(name, value)
  return saved


def config_from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """The run's config as a checkpoint recorded it (every key, ADDED_KEYS filled in;
  sequences as tuples)."""
  return ml_collections.ConfigDict(_tuples(with_added_keys(saved)))


def read_saved_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The config stored with checkpoint `step`."""
  saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  try:
    config = config_from_json(saved['config'])
    config.image_size, config.model.num_landmarks  # noqa: B018 (must exist)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    raise IncompatibleCheckpointError(
      f'The checkpoint in {manager.directory} holds a config this version of reenact_jax does '
      f'not know ({type(error).__name__}: {error}). Use the reenact_jax version that trained it.'
    ) from error
  return config


def check_compatible(saved_config: dict[str, Any], config, checkpoint_dir: str) -> None:
  """Raise IncompatibleCheckpointError naming every shape-deciding key that differs."""
  current = config_to_json(config)
  saved_config = with_added_keys(saved_config)
  differences = []
  for section in SHAPE_KEYS:
    saved = _flatten({section: saved_config.get(section)})
    now = _flatten({section: current.get(section)})
    for key in sorted(set(saved) | set(now)):
      if key in SHAPE_FREE_MODEL_KEYS:
        continue  # Precision, rematerialisation and lowering keep every shape.
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


def restore_or_init(
  manager: ocp.CheckpointManager, config, abstract_state, init: Callable[[], Any]
) -> tuple[Any, dict[str, Any] | None, int]:
  """(state, data iterator state or None, step) of the newest checkpoint that restores, or
  init() at step 0 when there is none.

  A rerun of the same command after a crash or preemption continues where the run stopped. A
  checkpoint that cannot be read (truncated or missing files, as a crash during a copy leaves
  them) is reported, moved aside to WORKDIR/corrupt_checkpoints/ (not deleted) and the one
  before it is used; a checkpoint of another configuration stops the run
  (IncompatibleCheckpointError), as does a workdir where no checkpoint restores
  (CorruptCheckpointError).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return init(), None, 0
  moved = []
  for step in steps:
    try:
      state, data_state = restore(manager, step, abstract_state, config)
      unreadable = None
    except CorruptCheckpointError as error:
      unreadable = error
    # Every host reads its own shards: all of them must agree before one moves the step aside.
    if distributed.all_processes_agree(unreadable is None):
      return state, data_state, int(step)
    moved.append(_set_aside(manager, step))
    logging.warning(
      '%s Moved it to %s; trying the previous checkpoint.',
      unreadable or f'The checkpoint at step {step} cannot be read on another host.',
      moved[-1],
    )
  raise CorruptCheckpointError(
    f'No checkpoint in {manager.directory} restores; the unreadable ones are in '
    f'{epath.Path(moved[0]).parent}. Restore a good copy there, or start a new run in another '
    '--workdir.'
  )


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Move checkpoint `step` to WORKDIR/corrupt_checkpoints/<step>[.<n>] (process 0 chooses
  and moves; every process waits for it) and make the manager forget it. Returns the path."""
  directory = epath.Path(manager.directory)
  aside = directory.parent / 'corrupt_checkpoints'
  target = aside / str(step)
  if jax.process_index() == 0:
    copies = 0
    while target.exists():
      copies += 1
      target = aside / f'{step}.{copies}'
    aside.mkdir(parents=True, exist_ok=True)
    (directory / str(step)).rename(target)
  distributed.barrier(f'checkpoint_{step}_set_aside')
  manager.reload()
  return str(target)


def restore_ema_params(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
  """Only the EMA generator parameters of checkpoint `step` (host arrays), by partial restore."""
  target = {'ema_params': abstract_params}
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=target,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True,
        )
      ),
    )
  except (ValueError, KeyError, TypeError) as error:
    raise IncompatibleCheckpointError(
      f'The generator in the checkpoint at step {step} in {manager.directory} does not match the '
      f'model this code builds ({type(error).__name__}: {str(error)[:500]}). It was written by '
      'another version of reenact_jax; retrain or use the matching code version.'
    ) from error
  return restored['state']['ema_params']


def restore(manager, step: int, abstract_state, config) -> tuple[Any, dict[str, Any]]:
  """Restore (state, data_state) at `step` onto the shardings of `abstract_state`.

  Raises IncompatibleCheckpointError when the checkpoint holds another model (its config or its
  tree of arrays differs: a readable checkpoint this code cannot use) and CorruptCheckpointError
  when it cannot be read at all (a truncated or missing file).
  """
  directory = str(manager.directory)
  where = f'The checkpoint at step {step} in {directory}'
  try:
    saved_config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    saved_config = saved_config['config']
    item = epath.Path(manager.directory) / str(step) / 'state'
    stored = ocp.PyTreeCheckpointHandler().metadata(item).tree
    stored = traverse_util.flatten_dict(dict(stored), sep='/')
    if saved_config is None or not stored:
      raise ValueError('its config or its array metadata is missing')
  except TRANSIENT_ERRORS:
    raise
  except Exception as error:  # orbax, json and tensorstore raise many types on broken files.
    raise _unreadable(where, error) from error
  check_compatible(saved_config, config, directory)
  target = flax.serialization.to_state_dict(abstract_state)
  expected = traverse_util.flatten_dict(target, sep='/')
  different = sorted(
    key
    for key in set(expected) | set(stored)
    if key not in stored
    or key not in expected
    or tuple(getattr(stored[key], 'shape', ())) != tuple(getattr(expected[key], 'shape', ()))
  )
  if different:
    raise IncompatibleCheckpointError(
      f'{where} does not match the state this code builds (arrays that differ: '
      f'{", ".join(different[:5])}{", ..." if len(different) > 5 else ""}). It was probably '
      'written by another version of reenact_jax; start a new run in another --workdir.'
    )
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
    )
  except TRANSIENT_ERRORS:
    raise
  except Exception as error:  # The tree matched, so this is a file that cannot be read.
    raise _unreadable(where, error) from error
  state = flax.serialization.from_state_dict(abstract_state, restored['state'])
  logging.info('Restored step %d from %s.', step, directory)
  return state, restored['data']


# Errors that say nothing about the checkpoint's files (a store that is down, no permission,
# no memory): re-raised as they are, so a passing outage never moves good checkpoints aside.
TRANSIENT_ERRORS = (PermissionError, ConnectionError, TimeoutError, MemoryError)


def _unreadable(where: str, error: BaseException) -> CorruptCheckpointError:
  return CorruptCheckpointError(
    f'{where} cannot be read ({type(error).__name__}: {cli.error_line(error, 300)}).'
  )


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
    abstract_state,
    shardings,
  )
