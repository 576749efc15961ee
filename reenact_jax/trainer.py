"""train_and_evaluate(config, workdir): mesh, data, init or restore, the loop, logs, checkpoints.

A run always resumes from the newest checkpoint in WORKDIR/checkpoints if there is one: the
same command after a crash, preemption or `--config.train.total_steps=<more>` continues the
run exactly (params, optimizer states, EMA, RNG, step and data order).
"""

import collections
import contextlib
import functools
import json
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tensorboardX import SummaryWriter

from reenact_jax import (
  checkpointing,
  cli,
  distributed,
  evaluation,
  input_pipeline,
  models,
  perceptual,
  sharding,
  steps,
)
from reenact_jax import train_state as train_state_lib
from reenact_jax import workdir as workdir_lib
from reenact_jax.models import layers


class NonFiniteError(FloatingPointError):
  pass


class ReplicaDivergenceError(RuntimeError):
  """Hosts hold different values of a replicated parameter (a non-deterministic op or bad
  hardware): continuing would train several different models under one name."""


class WriteError(RuntimeError):
  """Saving to the workdir failed (no space, no permission, object store unavailable). What was
  saved before is untouched; the message names the last good checkpoint to resume from."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the last step was saved (entry points exit 0)."""


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (save, then exit 0)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    # With several processes, jax.distributed's preemption service owns SIGTERM and tells every
    # host at which step to stop (a Python handler here would replace its handler).
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after this step, then exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    # On pods every host must agree on the step at which to stop.
    return multihost_utils.reached_preemption_sync_point(step)


def example_batch(
  generator: models.Generator, batch_size: int, num_sources: int = 1
) -> dict[str, jax.Array]:
  """Zeros shaped like a training batch: the generator's inputs (with num_sources - 1 extra
  source views) plus the driving frame."""
  batch = models.example_inputs(generator, batch_size, num_sources)
  batch['driving'] = batch['source']
  batch['driving_mask'] = batch['source_mask']
  batch['driving_matte'] = batch['source_matte']
  batch['driving_flow'] = jnp.zeros(batch['source'].shape[:3] + (2,), jnp.float32)
  batch['flow_known'] = jnp.zeros((batch_size,), jnp.float32)
  batch['source_occluder'] = jnp.zeros_like(batch['source_mask'])
  return batch


def make_init_fn(generator, discriminator, optimizers: train_state_lib.Optimizers):
  """rng -> fresh TrainState (to run under eval_shape, then jit with out_shardings)."""

  def init(rng: jax.Array) -> train_state_lib.TrainState:
    # Parameter init draws from an 'rbg' key: XLA compiles its many random draws several times
    # faster than threefry's. The state keeps the threefry key for the training steps.
    seed = jax.random.bits(jax.random.fold_in(rng, 1), dtype=jnp.uint32)
    generator_rng, discriminator_rng = jax.random.split(jax.random.key(seed, impl='rbg'))
    generator_params = models.init_params(generator, generator_rng)
    discriminator_variables = discriminator.init(
      discriminator_rng, example_batch(generator, 1)['driving'], update_stats=False
    )
    return train_state_lib.create(
      rng=rng,
      generator_params=generator_params,
      discriminator_variables=discriminator_variables,
      optimizers=optimizers,
    )

  return init


class Setup:
  """What a run builds from its config: models, optimisers, mesh, shardings, the abstract state;
  and, on first use, the perceptual loss weights and the compiled steps, which it keeps (runs
  that share a Setup compile once)."""

  def __init__(
    self, config: ml_collections.ConfigDict, mesh=None, *, abstract_perceptual: bool = False
  ):
    """abstract_perceptual=True: the VGG weights are shapes only, for lowering the train step
    ahead of time without the weights file (aot_check); such a Setup can compile but never run
    a train step."""
    self.config = config
    self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
    accum = int(config.train.grad_accum_steps)
    if accum < 1:
      raise ValueError(f'config.train.grad_accum_steps={accum} must be at least 1.')
    if config.train.batch_size % (self.mesh.size * accum):
      raise ValueError(
        f'config.train.batch_size={config.train.batch_size} does not divide into '
        f'{accum} micro-batch(es) (train.grad_accum_steps) over the {self.mesh.size} devices '
        f'of the mesh {dict(self.mesh.shape)}: use a multiple of {self.mesh.size * accum}.'
      )
    self.generator = models.make_generator(config.model, config.image_size)
    self.discriminator = models.make_discriminator(config.model)
    self.optimizers = train_state_lib.make_optimizers(config)
    self.init_fn = make_init_fn(self.generator, self.discriminator, self.optimizers)
    self._rng = jax.random.PRNGKey(config.seed)
    self.abstract_state = jax.eval_shape(self.init_fn, self._rng)
    self.state_shardings = sharding.state_shardings(self.abstract_state, self.mesh, config.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.replicated = sharding.replicated(self.mesh)
    self.weights = steps.LossWeights.from_config(config.loss)
    self._abstract_perceptual = abstract_perceptual
    self._compiled_steps = {}

  @functools.cached_property
  def perceptual(self) -> tuple[Any, steps.PerceptualFn]:
    """(VGG weights on every device (None when the backbone is 'none'), loss function)."""
    params, loss_fn = perceptual.make_perceptual_loss(
      self.config.perceptual,
      compute_dtype=layers.compute_dtype(self.config.model.compute_dtype),
      abstract=self._abstract_perceptual,
    )
    if params is None:
      return None, loss_fn
    if self._abstract_perceptual:
      params = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=self.replicated),
        params,
      )
      return params, loss_fn
    return jax.device_put(params, self.replicated), loss_fn

  def init_state(self) -> train_state_lib.TrainState:
    init = jax.jit(self.init_fn, out_shardings=self.state_shardings)
    return init(self._rng)

  def train_step(self, *, warp_only: bool):
    """The jitted train step of one phase: (state, batch, perceptual params) -> (state, metrics).

    The state is donated.
    """
    step = functools.partial(
      steps.train_step,
      generator=self.generator,
      discriminator=self.discriminator,
      perceptual_fn=self.perceptual[1],
      weights=self.weights,
      ema_decay=float(self.config.optim.ema_decay),
      warp_only=warp_only,
      grad_accum_steps=int(self.config.train.grad_accum_steps),
      micro_batch_sharding=NamedSharding(self.mesh, PartitionSpec(None, sharding.BATCH_AXES)),
    )
    return jax.jit(
      step,
      in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
      out_shardings=(self.state_shardings, self.replicated),
      donate_argnums=(0,),
    )

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
      key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=self.batch_sharding)
      for key, value in jax.eval_shape(
        lambda: example_batch(self.generator, batch_size, self.config.data.num_sources)
      ).items()
    }

  def lower_train_step(self, *, warp_only: bool):
    """The train step lowered on abstract inputs: compile it to check memory before running."""
    state = checkpointing.abstract_with_shardings(self.abstract_state, self.state_shardings)
    return self.train_step(warp_only=warp_only).lower(
      state, self.abstract_batch(self.config.train.batch_size), self.perceptual[0]
    )

  def compiled_train_step(self, *, warp_only: bool):
    """The train step of one phase compiled ahead of time (once per Setup)."""
    if warp_only not in self._compiled_steps:
      self._compiled_steps[warp_only] = self.lower_train_step(warp_only=warp_only).compile()
    return self._compiled_steps[warp_only]

  @functools.cached_property
  def render_step(self):
    """The jitted (EMA params, batch) -> image grid columns, for the training image logs."""
    return jax.jit(
      functools.partial(steps.render_step, generator=self.generator),
      in_shardings=(self.state_shardings.ema_params, self.batch_sharding),
      out_shardings=self.batch_sharding,
    )


def _check_setup_fits(setup: Setup, config: ml_collections.ConfigDict) -> None:
  mine = traverse_util.flatten_dict(checkpointing.config_to_json(setup.config), sep='.')
  theirs = traverse_util.flatten_dict(checkpointing.config_to_json(config), sep='.')
  # A Setup does not depend on the loop's settings nor on the data (but its batch has the
  # source views).
  ignored = checkpointing.LOOP_KEYS | {
    key for key in mine | theirs if key.startswith('data.') and key != 'data.num_sources'
  }
  if config.optim.schedule == 'cosine' and not config.optim.decay_steps:
    ignored -= {'total_steps', 'train.total_steps'}  # The schedule's length.
  differ = sorted(
    k for k in set(mine) | set(theirs) if k not in ignored and mine.get(k) != theirs.get(k)
  )
  if differ:
    raise ValueError(f'The given Setup was built for another config (differs in {differ}).')


class MetricsWriter:
  """metrics.jsonl, TensorBoard scalars/images and a terminal progress line (process 0 only)."""

  def __init__(self, log_dir: pathlib.Path, total_steps: int, start_step: int = 0):
    """The logs continue from start_step (the restored one, or 0): what an interrupted run
    logged after it is dropped (`truncate_metrics`), and TensorBoard is told to purge its
    events from start_step + 1 on."""
    self._active = jax.process_index() == 0
    self._total_steps = total_steps
    self._jsonl = None
    self._tensorboard = None
    if self._active:
      path = log_dir / 'metrics.jsonl'
      dropped = truncate_metrics(path, start_step)
      if dropped:
        logging.warning(
          'Resuming at step %d: dropped %d line(s) of %s logged after it by the interrupted run.',
          start_step,
          dropped,
          path,
        )
      self._jsonl = path.open('a')
      self._tensorboard = SummaryWriter(str(log_dir / 'tensorboard'), purge_step=start_step + 1)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self._active:
      return
    record = {'step': step, **values}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for key, value in values.items():
      self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def images(self, step: int, name: str, grid: np.ndarray) -> None:
    if self._active:
      self._tensorboard.add_image(name, grid, step, dataformats='HWC')
      self._tensorboard.flush()

  def progress(self, step: int, values: dict[str, float], seconds_per_step: float) -> None:
    if not self._active:
      return
    eta = max(self._total_steps - step, 0) * seconds_per_step
    hours, rest = divmod(int(eta), 3600)
    line = (
      f'step {step}/{self._total_steps}  loss {values["loss/total"]:.4f}  '
      f'{values["examples_per_sec"]:.1f} ex/s  {values["step_time_ms"]:.0f} ms/step  '
      f'ETA {hours:d}:{rest // 60:02d}:{rest % 60:02d}'
    )
    print(line, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tensorboard.close()


def truncate_metrics(path: pathlib.Path, step: int) -> int:
  """Keep the records of metrics.jsonl up to `step` (and none that is cut off or unreadable, as
  a crash mid-write leaves); returns how many lines were dropped. Rewrites the file atomically."""
  if not path.exists():
    return 0
  kept, dropped = [], 0
  for line in path.read_text().splitlines():
    try:
      record_step = json.loads(line)['step']
    except (ValueError, KeyError, TypeError):
      record_step = None
    if isinstance(record_step, int) and record_step <= step:
      kept.append(line + '\n')
    else:
      dropped += 1
  if dropped:
    partial = path.with_name(path.name + '.tmp')
    partial.write_text(''.join(kept))
    partial.replace(path)
  return dropped


GRID_COLUMNS = ('source', 'driving', 'projected', 'warped', 'foreground', 'background', 'output')


def image_grid(images: dict[str, np.ndarray], max_rows: int = 4) -> np.ndarray:
  """Rows of examples, columns source | driving | projected warp | warped source pixels |
  foreground | background | output; (rows * H, 7 * W, 3) uint8."""
  rows = []
  for index in range(min(max_rows, images['source'].shape[0])):
    rows.append(np.concatenate([images[name][index] for name in GRID_COLUMNS], axis=1))
  grid = np.concatenate(rows, axis=0)
  return (np.clip(grid, 0.0, 1.0) * 255).round().astype(np.uint8)


def _host_scalars(metrics: dict[str, jax.Array]) -> dict[str, float]:
  # Replicated scalars: every process holds a full copy; read the local one.
  return {key: float(np.asarray(value.addressable_data(0))) for key, value in metrics.items()}


@jax.jit
def _fingerprints(tree) -> jax.Array:
  # Per leaf, sum and sum of squares. On a replicated leaf every device reduces its own copy
  # (SPMD, no communication), so each process sees the value of its local replica.
  leaves = [leaf.astype(jnp.float32) for leaf in jax.tree.leaves(tree)]
  return jnp.stack([jnp.sum(leaf) for leaf in leaves] + [jnp.sum(leaf * leaf) for leaf in leaves])


def check_replicas(state: train_state_lib.TrainState, step: int) -> None:
  """With several processes, check that every process holds the same parameters (by per-leaf
  checksums of its local replicas, gathered from all processes) and log the fingerprint."""
  if jax.process_count() == 1:
    return
  params = {'generator': state.generator_params, 'discriminator': state.discriminator_params}
  local = np.asarray(_fingerprints(params).addressable_data(0))
  everyone = np.asarray(multihost_utils.process_allgather(local))
  differs = ~np.all(everyone == everyone[:1], axis=0)
  names = [sharding.path_string(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  bad = sorted({names[index % len(names)] for index in np.flatnonzero(differs)})
  if bad:
    raise ReplicaDivergenceError(
      f'At step {step} the processes hold different values of {len(bad)} parameter tensors '
      f'(first: {", ".join(bad[:5])}). The newest checkpoint before this step is the last '
      'consistent one; look for non-deterministic ops or a faulty host.'
    )
  logging.info(
    'Step %d: parameters identical on all %d processes (fingerprint %.9e).',
    step,
    jax.process_count(),
    float(np.sum(local, dtype=np.float64)),
  )


def check_finite(values: dict[str, float], step: int) -> None:
  bad = [key for key, value in values.items() if not np.isfinite(value)]
  if bad:
    raise NonFiniteError(
      f'Non-finite {", ".join(bad)} at step {step} (averaged since the last log). The run '
      'stopped without saving this state; the newest checkpoint is the last good one. Lower '
      'config.optim.*_lr or check the data, then rerun the same command to resume.'
    )


class _Prefetcher:
  """Puts the next batches on device ahead of the step, remembering each batch's data state."""

  def __init__(self, iterator: input_pipeline.Iterator, mesh, depth: int):
    self._iterator = iterator
    self._mesh = mesh
    self._queue = collections.deque()
    self._depth = max(depth, 1)

  def _fill(self) -> None:
    while len(self._queue) < self._depth:
      local = next(self._iterator)
      self._queue.append((sharding.global_batch(local, self._mesh), self._iterator.get_state()))

  def next(self) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    self._fill()
    item = self._queue.popleft()
    self._fill()
    return item


def _setup_logging(log_dir: pathlib.Path) -> logging.Handler:
  """Everything to WORKDIR/train.<process>.log; tracebacks (e.g. of orbax's asynchronous
  writer) go only there, not to the terminal, which gets the run's one-line error."""
  handler = logging.FileHandler(str(log_dir / f'train.{jax.process_index()}.log'))
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  logging.getLogger().addHandler(handler)
  logging.getLogger().setLevel(logging.INFO)
  for terminal in logging.getLogger().handlers:
    if terminal is not handler:
      terminal.addFilter(_no_tracebacks)
  return handler


def _no_tracebacks(record: logging.LogRecord) -> bool:
  return not record.exc_info


def _last_good_checkpoint(workdir: epath.Path, manager) -> str:
  """'step N (WORKDIR/checkpoints/N)' of the newest complete checkpoint, or 'none' (orbax's own
  view of the folder: a step still being written, or whose write failed, is not complete)."""
  try:
    manager.reload()
    step = manager.latest_step()
  except Exception:  # The workdir itself may be unreadable now.
    step = None
  return 'none' if step is None else f'step {step} ({workdir / "checkpoints" / str(step)})'


def _write_error(workdir: epath.Path, step: int, error: BaseException, manager) -> WriteError:
  """The one-line WriteError, once the manager's pending save (if any) has ended either way."""
  try:
    manager.wait_until_finished()
  except Exception:  # Its own failure is in the log; the first error is the one to report.
    logging.exception('A pending checkpoint could not be written either.')
  return WriteError(
    f'Could not save to {workdir} by step {step} ({type(error).__name__}: '
    f'{cli.error_line(error, 300)}). The last good checkpoint is '
    f'{_last_good_checkpoint(workdir, manager)}; free space or fix access, then rerun the same '
    'command to resume from it.'
  )


@contextlib.contextmanager
def _writing(workdir: epath.Path, step: int, manager, errors=(OSError,)):
  """A failed write inside (no space, no permission, store unavailable) ends the run as one
  WriteError; `errors` are the exception types that mean it."""
  try:
    yield
  except errors as error:
    raise _write_error(workdir, step, error, manager) from error


def _enable_compilation_cache(setting: str, workdir: epath.Path) -> None:
  """'' = WORKDIR/compilation_cache unless JAX_COMPILATION_CACHE_DIR already names one;
  'none' = off; anything else is the cache's path. Restarts and every host of a pod then reuse
  compiled steps instead of compiling again (minutes for the large configs)."""
  if setting == 'none':
    return
  if not setting and os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  path = setting or str(workdir / 'compilation_cache')
  jax.config.update('jax_compilation_cache_dir', path)
  logging.info('Persistent compilation cache: %s', path)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, setup: Setup | None = None
) -> dict[str, float]:
  """Train (resuming if WORKDIR has a checkpoint) until config.train.total_steps.

  Args:
    setup: a Setup of this config to reuse (with its compiled steps), e.g. across the runs of a
      test session; it may differ from `config` only in the loop's settings
      (checkpointing.LOOP_KEYS) and the data.

  Returns the last logged metrics (empty if no step ran).
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  log_dir = workdir_lib.LogDir(workdir, config.train.local_log_dir)
  log_handler = _setup_logging(log_dir.local)
  _enable_compilation_cache(config.train.compilation_cache_dir, workdir)
  distributed.log_topology()
  train_config = config.train
  if setup is None:
    setup = Setup(config)
  else:
    _check_setup_fits(setup, config)
  logging.info(
    'Mesh: %s; %d processes; batch %d = %d per device x %d devices (%d micro-batch(es)).',
    dict(setup.mesh.shape),
    jax.process_count(),
    train_config.batch_size,
    train_config.batch_size // setup.mesh.size,
    setup.mesh.size,
    train_config.grad_accum_steps,
  )

  manager = checkpointing.make_manager(str(workdir), max_to_keep=train_config.max_to_keep)
  state, data_state, start_step = checkpointing.restore_or_init(
    manager,
    config,
    checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings),
    setup.init_state,
  )

  frames = input_pipeline.make_frame_source(config, 'train')
  input_pipeline.log_source(frames)
  iterator = input_pipeline.Iterator(input_pipeline.make_train_dataset(config, frames))
  if data_state:
    iterator.set_state(data_state)
  prefetcher = _Prefetcher(iterator, setup.mesh, config.data.prefetch)

  # Compile the steps this run still needs before the first one: an out-of-memory config fails
  # here, and hosts that compile at different speeds (cache hits, load) meet at a barrier with a
  # long timeout instead of timing out in the first collective.
  def warp_only_at(step: int) -> bool:
    return step < train_config.phase1_steps

  # Phases only move forward, so the first and last remaining steps name every phase needed.
  remaining = range(start_step, train_config.total_steps)
  needed = {warp_only_at(remaining[0]), warp_only_at(remaining[-1])} if remaining else set()
  phase_steps = {warp_only: setup.compiled_train_step(warp_only=warp_only) for warp_only in needed}
  perceptual_params = setup.perceptual[0]
  distributed.barrier('train_steps_compiled')
  render = setup.render_step
  writer = MetricsWriter(log_dir.local, train_config.total_steps, start_step)
  add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))

  last_values: dict[str, float] = {}
  accumulated, accumulated_steps = None, 0
  data_state = data_state or iterator.get_state()
  interval_start, interval_start_step = time.perf_counter(), start_step
  step = start_step
  preempted = False
  stopped_by = None
  try:
    with _Preemption() as preemption:
      while step < train_config.total_steps:
        batch, next_data_state = prefetcher.next()
        warp_only = warp_only_at(step)
        with jax.transfer_guard('disallow' if train_config.transfer_guard else 'allow'):
          state, metrics = phase_steps[warp_only](state, batch, perceptual_params)
        step += 1
        data_state = next_data_state
        accumulated = metrics if accumulated is None else add(accumulated, metrics)
        accumulated_steps += 1

        is_last = step == train_config.total_steps
        preempted = preemption.reached(step)
        log_now = step % train_config.log_every == 0 or is_last or preempted
        save_now = step % train_config.checkpoint_every == 0 or is_last or preempted
        if log_now or save_now:
          values = {k: v / accumulated_steps for k, v in _host_scalars(accumulated).items()}
          check_finite(values, step)  # Before saving: never checkpoint a broken state.
          elapsed = time.perf_counter() - interval_start
          seconds_per_step = elapsed / max(step - interval_start_step, 1)
          values['step_time_ms'] = 1000.0 * seconds_per_step
          values['examples_per_sec'] = train_config.batch_size / max(seconds_per_step, 1e-9)
          values['lr/warp'] = float(setup.optimizers.warp_schedule(step))
          values['lr/render'] = float(
            setup.optimizers.render_schedule(max(step - train_config.phase1_steps, 0))
          )
          with _writing(workdir, step, manager):
            writer.scalars(step, values)
            writer.progress(step, values, seconds_per_step)
          last_values = values
          accumulated, accumulated_steps = None, 0
          interval_start, interval_start_step = time.perf_counter(), step
        if train_config.image_log_every and (step % train_config.image_log_every == 0 or is_last):
          images = multihost_utils.process_allgather(render(state.ema_params, batch), tiled=True)
          with _writing(workdir, step, manager):
            writer.images(
              step,
              'ema/source|driving|projected|warped|foreground|background|output',
              image_grid(jax.tree.map(np.asarray, images)),
            )
        if train_config.eval_every and (step % train_config.eval_every == 0 or is_last):
          evaluation.evaluate(
            config,
            state.ema_params,
            setup.generator,
            split=config.eval.split,
            cross_identity=False,
            max_clips=config.eval.max_clips,
            workdir=str(log_dir.local),
            step=step,
          )
        if save_now:
          check_replicas(state, step)
          # orbax raises the previous asynchronous save's error here, of many types.
          with _writing(workdir, step, manager, errors=(Exception,)):
            checkpointing.save(manager, step, state, data_state, config)
          with _writing(workdir, step, manager):
            log_dir.sync()
        if preempted:
          logging.warning('Checkpoint saved at step %d after SIGTERM; exiting.', step)
          break
  except BaseException as error:
    stopped_by = error
    raise
  finally:
    # Let an asynchronous save finish even when the loop stops on another error (a WriteError
    # has waited for it already); a failure here is raised below when nothing else is.
    failure = None
    if not isinstance(stopped_by, WriteError):
      try:
        manager.wait_until_finished()
      except Exception as error:
        logging.exception('The last checkpoint could not be written.')
        if stopped_by is None:
          failure = _write_error(workdir, step, error, manager)
    logging.getLogger().removeHandler(log_handler)
    for finish in (writer.close, log_handler.close, log_dir.sync):
      try:
        finish()
      except OSError as error:
        if stopped_by is None and failure is None:
          failure = _write_error(workdir, step, error, manager)
    try:
      manager.close()
    except Exception:
      logging.exception('Closing the checkpoint manager failed.')
  if failure:
    raise failure
  if preempted:
    raise Preempted(f'Stopped by SIGTERM at step {step}; checkpoint saved in {workdir}.')
  return last_values
