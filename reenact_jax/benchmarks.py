"""Benchmarks; the command is `python -m reenact_jax.benchmark --config=... --what=...`.

Each function returns one JSON-able dict (the command prints it): benchmark_warp (the project's
3D warp against map_coordinates), benchmark_step (one compiled train step), benchmark_input (the
input pipeline and data preparation), benchmark_reenact (the generator and the exported
artifact).

Timings are the median of `--repeats` runs after compilation, each ended by
`block_until_ready`, as wall time (`*_ms`) and process CPU time (`*_cpu_ms`).
Forward+backward is `jax.vjp` with a fixed random cotangent (the way the gradient arrives
from the layers above in training), giving gradients w.r.t. both the volume and the flow.
"""

import pathlib
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from reenact_jax import (
  bundled,
  checkpointing,
  crops,
  exported,
  exporter,
  face,
  inference,
  input_pipeline,
  media,
  models,
  preparation,
  sharding,
  step_profile,
  trainer,
  warp,
)

# Upper bound on the warp batch on CPU, so the benchmark stays minutes, not hours.
_CPU_MAX_BATCH = 4


def _time_ms(fn: Callable, *args, repeats: int) -> tuple[float, float]:
  """Median wall and process-CPU milliseconds of fn(*args), after one compile-and-run call.

  The CPU time (summed over XLA's threads) is printed beside the wall time because on a
  shared machine the wall time also measures the neighbours' load.
  """
  jax.block_until_ready(fn(*args))
  wall, cpu = [], []
  for _ in range(repeats):
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - wall_start)
    cpu.append(time.process_time() - cpu_start)
  return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def map_coordinates_warp_3d(volume: jax.Array, flow: jax.Array) -> jax.Array:
  """The textbook baseline: map_coordinates(order=1, zeros outside) per batch and channel.

  Same contract as `warp.warp_3d`: volume (B, D, H, W, C), flow (B, D, H, W, 3) normalised.
  """
  depth, height, width = flow.shape[1:4]
  coords = warp.identity_grid_3d(depth, height, width) + flow
  sizes = jnp.array(volume.shape[3:0:-1], coords.dtype)  # (W, H, D) for (x, y, z)
  index = ((coords + 1.0) * sizes - 1.0) * 0.5

  def one_channel(channel_volume, idx):
    return jax.scipy.ndimage.map_coordinates(
      channel_volume, [idx[..., 2], idx[..., 1], idx[..., 0]], order=1, mode='constant'
    )

  per_batch = jax.vmap(jax.vmap(one_channel, in_axes=(0, None)), in_axes=(0, 0))
  return jnp.moveaxis(per_batch(jnp.moveaxis(volume, -1, 1), index), 1, -1)


def _forward_backward(warp_fn: Callable) -> Callable:
  def run(volume, flow, cotangent):
    out, pull_back = jax.vjp(warp_fn, volume, flow)
    return out, pull_back(cotangent)

  return jax.jit(run)


def warp_batch_size(config: ml_collections.ConfigDict) -> int:
  batch = max(1, config.train.batch_size // jax.device_count())
  if jax.default_backend() == 'cpu':
    batch = min(batch, _CPU_MAX_BATCH)
  return batch


def benchmark_warp(config: ml_collections.ConfigDict, *, batch: int = 0, repeats: int = 7):
  """Times warp.warp_3d and the map_coordinates baseline; returns the result dict."""
  batch = batch or warp_batch_size(config)
  size = config.image_size // 4
  shape = (batch, config.model.volume_depth, size, size)
  channels = config.model.volume_channels
  volume_key, flow_key, cotangent_key = jax.random.split(jax.random.PRNGKey(0), 3)
  volume = jax.random.normal(volume_key, (*shape, channels), jnp.float32)
  # Flows of a few voxels, some reaching outside the volume: the padding path is exercised.
  flow = 0.1 * jax.random.normal(flow_key, (*shape, 3), jnp.float32)
  cotangent = jax.random.normal(cotangent_key, (*shape, channels), jnp.float32)

  result = dict(
    what='warp',
    backend=jax.default_backend(),
    devices=jax.device_count(),
    shape_bdhwc=[*shape, channels],
  )
  for name, fn in [('warp3d', warp.warp_3d), ('map_coordinates', map_coordinates_warp_3d)]:
    for mode, compiled, args in [
      ('forward', jax.jit(fn), (volume, flow)),
      ('forward_backward', _forward_backward(fn), (volume, flow, cotangent)),
    ]:
      wall_ms, cpu_ms = _time_ms(compiled, *args, repeats=repeats)
      result[f'{name}_{mode}_ms'] = round(wall_ms, 3)
      result[f'{name}_{mode}_cpu_ms'] = round(cpu_ms, 3)
  for mode in ('forward', 'forward_backward'):
    for suffix in ('ms', 'cpu_ms'):
      ratio = result[f'map_coordinates_{mode}_{suffix}'] / result[f'warp3d_{mode}_{suffix}']
      result[f'speedup_{mode}' + ('_cpu' if suffix == 'cpu_ms' else '')] = round(ratio, 2)
  return result


def measure_matmul_peak(mesh, dtype, *, repeats: int = 5) -> float:
  """FLOP/s of large square matmuls in `dtype`, one per device of `mesh`, all at once.

  The practical peak of these devices for this dtype, measured in the same process as the
  step it is compared with (on a shared machine a vendor's peak says little).
  """
  size = 1024 if mesh.devices.flat[0].platform == 'cpu' else 8192
  sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
  shape = (mesh.size, size, size)
  a = jax.device_put(jnp.ones(shape, dtype), sharding)
  b = jax.device_put(jnp.ones(shape, dtype), sharding)
  matmul = jax.jit(lambda a, b: jnp.einsum('bij,bjk->bik', a, b), out_shardings=sharding)
  wall_ms, _ = _time_ms(matmul, a, b, repeats=repeats)
  return 2.0 * mesh.size * size**3 / (wall_ms / 1e3)


def _flops(compiled) -> float:
  """FLOPs of a compiled program by XLA's cost analysis (one device's share when SPMD)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get('flops', 0.0))


def _random_batch(generator: models.Generator, config) -> dict[str, np.ndarray]:
  """This process's share of a train batch: random frames, landmarks that move a little."""
  local = {
    key: np.asarray(value)
    for key, value in trainer.example_batch(
      generator, config.train.batch_size // jax.process_count(), config.data.num_sources
    ).items()
  }
  rng = np.random.default_rng(0)
  local['source'] = rng.random(local['source'].shape, np.float32)
  local['driving'] = rng.random(local['driving'].shape, np.float32)
  local['source_landmarks'] = rng.uniform(-0.5, 0.5, local['source_landmarks'].shape).astype(
    np.float32
  )
  local['driving_landmarks'] = local['source_landmarks'] + rng.normal(
    0, 0.01, local['source_landmarks'].shape
  ).astype(np.float32)
  if 'extra_sources' in local:  # Other views: other frames, landmarks a little elsewhere.
    local['extra_sources'] = rng.random(local['extra_sources'].shape, np.float32)
    local['extra_source_landmarks'] = local['source_landmarks'][:, None] + rng.normal(
      0, 0.02, local['extra_source_landmarks'].shape
    ).astype(np.float32)
    local['extra_source_mattes'] = np.broadcast_to(
      local['source_matte'][:, None], local['extra_source_mattes'].shape
    ).copy()
  return local


def benchmark_step(
  config: ml_collections.ConfigDict, *, repeats: int = 7, warp_only: bool = False
) -> dict[str, Any]:
  """One compiled train step at the config's sizes, on every device of this machine.

  step_time_ms is the median of `repeats` steps after compilation (each ended by
  block_until_ready on the metrics, the state donated from step to step, as in training);
  flops_per_step from XLA's cost analysis of the compiled step (all devices); peak_bytes from
  its memory analysis (arguments + outputs + temporaries - donated aliases, per device);
  achieved_flops_per_sec = flops_per_step / step time, and its ratio to the matmul peak of the
  same devices in the compute dtype, measured in the same run (`measure_matmul_peak`).
  """
  setup = trainer.Setup(config)
  started = time.perf_counter()
  compiled = setup.lower_train_step(warp_only=warp_only).compile()
  compile_s = time.perf_counter() - started
  memory = compiled.memory_analysis()
  peak_bytes = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )

  state = setup.init_state()
  batch = sharding.global_batch(_random_batch(setup.generator, config), setup.mesh)
  times = []
  for index in range(repeats + 1):
    started = time.perf_counter()
    state, metrics = compiled(state, batch, setup.perceptual[0])
    jax.block_until_ready(metrics)
    if index:  # The first call pays for allocation and warm-up.
      times.append(time.perf_counter() - started)
  step_seconds = statistics.median(times)
  devices = int(setup.mesh.size)
  # XLA's cost analysis of an SPMD program counts one device's share.
  flops_per_step = _flops(compiled) * devices
  dtype = jnp.bfloat16 if config.model.compute_dtype == 'bfloat16' else jnp.float32
  peak = measure_matmul_peak(setup.mesh, dtype)
  achieved = flops_per_step / step_seconds
  return {
    'what': 'step',
    'phase': 1 if warp_only else 2,
    'image_size': int(config.image_size),
    'batch_size': int(config.train.batch_size),
    'devices': devices,
    'platform': jax.devices()[0].platform,
    'compute_dtype': config.model.compute_dtype,
    'remat': bool(config.model.remat),
    'grad_accum_steps': int(config.train.grad_accum_steps),
    'mesh': dict(setup.mesh.shape),
    'step_time_ms': round(1000 * step_seconds, 2),
    'examples_per_sec': round(config.train.batch_size / step_seconds, 2),
    'compile_s': round(compile_s, 2),
    'flops_per_step': flops_per_step,
    'achieved_flops_per_sec': achieved,
    'matmul_peak_flops_per_sec': peak,
    'fraction_of_matmul_peak': round(achieved / peak, 4),
    'peak_bytes': int(peak_bytes),
    'repeats': repeats,
  }


# The generator's parts timed by `benchmark_layers`, in the order the forward pass runs them.
GENERATOR_PARTS = ('encoder', 'flow_net', 'projection', 'renderer', 'inpainter')


def _generator_part_calls(generator, params, example) -> dict[str, tuple[Any, tuple]]:
  """Part name -> (the unbound part, its first call's arguments as ShapeDtypeStructs), recorded
  by intercepting the generator's forward pass under eval_shape (nothing runs)."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if (
      context.method_name == '__call__'
      and module.name in GENERATOR_PARTS
      and len(module.scope.path) == 1
      and module.name not in calls
    ):
      if kwargs:
        raise ValueError(f'generator part {module.name} takes keyword arguments: {list(kwargs)}')
      shapes = tuple(jax.ShapeDtypeStruct(arg.shape, arg.dtype) for arg in args)
      calls[module.name] = (module.clone(parent=None), shapes)
    return next_fun(*args, **kwargs)

  def forward(params, example):
    with nn.intercept_methods(record):
      return generator.apply({'params': params}, **example, with_cycle=True)

  jax.eval_shape(forward, params, example)
  return calls


def _random_like(tree, key, draw: Callable = jax.random.uniform):
  """A tree of random arrays shaped like `tree`'s leaves (arrays or ShapeDtypeStructs)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef, [draw(key, leaf.shape, leaf.dtype) for key, leaf in zip(keys, leaves, strict=True)]
  )


def _time_part(
  apply: Callable, params, inputs: list, *, frozen=None, repeats: int
) -> dict[str, Any]:
  """Forward, and forward + backward w.r.t. params and inputs, of apply(params, frozen, *inputs).

  `frozen` (arrays the part reads but is not differentiated by, e.g. a frozen VGG's weights) is
  an argument of the compiled programs, not a constant folded into them.

  The backward pulls a fixed random cotangent (as from the layers above); its time is split by
  kind of instruction (`step_profile.KINDS`), from a profiler trace.
  """
  outputs = jax.eval_shape(apply, params, frozen, *inputs)
  cotangent = _random_like(outputs, jax.random.PRNGKey(1), jax.random.normal)

  def forward_backward(params, frozen, inputs, cotangent):
    _, pull_back = jax.vjp(lambda params, *inputs: apply(params, frozen, *inputs), params, *inputs)
    return pull_back(cotangent)

  forward_ms, _ = _time_ms(jax.jit(apply), params, frozen, *inputs, repeats=repeats)
  compiled = jax.jit(forward_backward).lower(params, frozen, inputs, cotangent).compile()
  profile = step_profile.profile_kinds(
    lambda: compiled(params, frozen, inputs, cotangent), compiled.as_text(), repeats=repeats
  )
  wall_ms = profile.pop('wall_ms')
  flops = _flops(compiled)
  return {
    'forward_ms': round(forward_ms, 3),
    'forward_backward_ms': wall_ms,
    **profile,
    'forward_backward_flops': flops,
    'forward_backward_flops_per_sec': flops / (wall_ms / 1e3),
  }


def benchmark_layers(config: ml_collections.ConfigDict, *, repeats: int = 3) -> dict[str, Any]:
  """Each model part's forward and forward+backward time and FLOP/s, and the train step's time
  split by kind of instruction (conv weight gradients, other convolutions, matmuls, the rest).

  Parts run alone on one device at the config's sizes and the per-device micro-batch, on random
  inputs shaped as in the step (recorded from the generator's own forward pass): the
  generator's parts (GENERATOR_PARTS), the 3D warp, the discriminator (update_stats off) and
  the perceptual loss at the output and at the projected size. Per call: the step calls the
  flow network, warp and projection twice (the cycle), the discriminator four times (twice in
  the generator's loss, real and fake in its own step), the perceptual loss once per size; a
  frozen VGG has no weight gradients. The backward is w.r.t. parameters and inputs.
  """
  setup = trainer.Setup(config)
  micro_batch = config.train.batch_size // (setup.mesh.size * config.train.grad_accum_steps)
  device = jax.local_devices()[0]
  state = jax.device_put(setup.init_state(), device)
  generator_params = state.generator_params
  example = trainer.example_batch(setup.generator, micro_batch)
  generator_example = {name: example[name] for name in models.INPUT_NAMES}
  calls = _generator_part_calls(setup.generator, generator_params, generator_example)
  key = jax.random.PRNGKey(0)
  parts = {}
  for name in GENERATOR_PARTS:
    module, shapes = calls[name]

    def apply(params, _, *inputs, module=module):
      return module.apply({'params': params}, *inputs)

    inputs = list(_random_like(shapes, jax.random.fold_in(key, len(parts))))
    parts[name] = _time_part(apply, generator_params[name], inputs, repeats=repeats)

  volume_shape = calls['projection'][1][0]
  flow_shape = jax.ShapeDtypeStruct((*volume_shape.shape[:4], 3), jnp.float32)
  volume, flow = _random_like((volume_shape, flow_shape), jax.random.fold_in(key, 100))
  parts['warp'] = _time_part(
    lambda _, __, volume, flow: warp.warp_3d(volume, 0.1 * flow),
    {},
    [volume, flow],
    repeats=repeats,
  )

  images = example['driving'].shape
  image = jax.random.uniform(jax.random.fold_in(key, 101), images, jnp.float32)

  def discriminate(params, batch_stats, image):
    return setup.discriminator.apply(
      {'params': params, 'batch_stats': batch_stats}, image, update_stats=False
    )

  if setup.weights.adversarial:
    parts['discriminator'] = _time_part(
      discriminate,
      state.discriminator_params,
      [image],
      frozen=state.discriminator_stats,
      repeats=repeats,
    )

  perceptual_params, perceptual_fn = setup.perceptual
  if perceptual_params is not None:
    perceptual_params = jax.device_put(perceptual_params, device)
    projected_size = volume_shape.shape[2]
    for name, size in [('perceptual', images[1]), ('perceptual_projected', projected_size)]:
      target = jax.image.resize(image, (images[0], size, size, 3), 'linear')

      def perceptual_loss(_, frozen, prediction):
        vgg_params, target = frozen
        return perceptual_fn(vgg_params, prediction, target)

      parts[name] = _time_part(
        perceptual_loss, {}, [target[::-1]], frozen=(perceptual_params, target), repeats=repeats
      )

  compiled = setup.lower_train_step(warp_only=False).compile()
  step_state = [setup.init_state()]
  batch = sharding.global_batch(_random_batch(setup.generator, config), setup.mesh)

  def train_step():
    step_state[0], metrics = compiled(step_state[0], batch, setup.perceptual[0])
    return metrics

  step = step_profile.profile_kinds(train_step, compiled.as_text(), repeats=repeats)
  step['flops'] = _flops(compiled) * setup.mesh.size
  return {
    'what': 'layers',
    'image_size': int(config.image_size),
    'batch_size': int(config.train.batch_size),
    'micro_batch_per_device': int(micro_batch),
    'platform': device.platform,
    'compute_dtype': config.model.compute_dtype,
    'parts': parts,
    'step': step,
    'repeats': repeats,
  }


def benchmark_input(config: ml_collections.ConfigDict, *, repeats: int = 3) -> dict[str, Any]:
  """Input pipeline pairs/s (median of `repeats` runs) and data preparation frames/s."""
  runs = [measure_throughput(config, num_batches=20, warmup_batches=4) for _ in range(repeats)]
  result = dict(runs[0])
  result['pairs_per_sec'] = round(statistics.median(run['pairs_per_sec'] for run in runs), 1)
  result['pairs_per_sec_runs'] = [round(run['pairs_per_sec'], 1) for run in runs]
  result['data_source'] = config.data.source
  result.update(measure_prepare_speed(resolution=config.image_size))
  result.update(measure_prepare_stages(resolution=config.image_size))
  result['what'] = 'input'
  return result


def _time_calls(fn, inputs, repeats: int) -> float:
  """Median seconds of fn(*inputs) after one warm-up call, each ended by block_until_ready."""
  jax.block_until_ready(fn(*inputs))
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(fn(*inputs))
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def benchmark_reenact(
  config: ml_collections.ConfigDict, *, repeats: int = 7, workdir: str = ''
) -> dict[str, Any]:
  """Frames per second of the jitted generator and of the exported artifact, batch 1 and 8.

  Rendering only (inputs already decoded and cropped, as in `reenact` after video decode). The
  generator is the EMA generator of WORKDIR's newest checkpoint, or, without --workdir, freshly
  initialised parameters of the config (speed does not depend on the values), written as a
  step-0 checkpoint to a temporary folder so the exported artifact is made by the real
  `export` path.
  """
  with tempfile.TemporaryDirectory() as scratch:
    if not workdir:
      workdir = f'{scratch}/run'
      setup = trainer.Setup(config)
      manager = checkpointing.make_manager(workdir, max_to_keep=1, async_save=False)
      checkpointing.save(manager, 0, setup.init_state(), None, config)
      manager.wait_until_finished()
      manager.close()
    loaded = inference.load_generator(workdir)
    exporter.export_generator(workdir, f'{scratch}/export', verify=False)
    artifact = exported.load(f'{scratch}/export')
    config = loaded.config
    result = {
      'what': 'reenact',
      'image_size': int(config.image_size),
      'platform': jax.devices()[0].platform,
      'step': loaded.step,
    }
    rng = np.random.default_rng(0)
    for batch in (1, 8):
      size, points = config.image_size, config.model.num_landmarks
      landmarks = rng.uniform(-0.5, 0.5, (batch, points, 3)).astype(np.float32)
      inputs = [
        rng.random((batch, size, size, 3), np.float32),
        landmarks,
        landmarks + rng.normal(0, 0.01, landmarks.shape).astype(np.float32),
        (rng.random((batch, size, size, 1)) > 0.5).astype(np.float32),
        (rng.random((batch, size, size, 1)) > 0.3).astype(np.float32),
      ]
      on_device = jax.device_put(inputs, jax.local_devices()[0])
      device_inputs = dict(zip(models.INPUT_NAMES, on_device, strict=True))
      jitted = _time_calls(loaded, [device_inputs], repeats)
      artifact_seconds = _time_calls(artifact, inputs, repeats)
      result[f'frames_per_sec_batch{batch}'] = round(batch / jitted, 3)
      result[f'exported_frames_per_sec_batch{batch}'] = round(batch / artifact_seconds, 3)
      compiled = inference.render_fn(loaded.generator).lower(loaded.params, device_inputs).compile()
      result[f'tflop_per_frame_batch{batch}'] = round(_flops(compiled) / batch / 1e12, 4)
  return result


def benchmark_flow(
  config: ml_collections.ConfigDict, *, steps: int = 300, workdir: str = '', pairs_per_clip: int = 4
) -> dict[str, Any]:
  """End-point error of the image flow on held-out synthetic pairs, whose true motion is known.

  Trains the (synthetic-data) config for `steps` steps in a temporary folder (or uses WORKDIR's
  newest checkpoint), then, on the test split's clips (identities never seen in training), takes
  frame 0 as the source and `pairs_per_clip` later frames as driving frames, and measures the
  2D flow the generator warps the source pixels with ('flow_2d': the 3D flow projected to the
  image) against synthetic.true_flow, on the driving frame's skin. Reports, in pixels, the mean
  end-point error of: no motion (zero flow), the geometric prior alone, and prior + learned
  correction (the trained model). Training sees the true motion of its own clips (loss.flow),
  never of these.
  """
  if config.data.source != 'synthetic':
    raise ValueError(
      "--what=flow needs config.data.source='synthetic' (the clips' true motion is known), e.g. "
      '--config=configs/tiny.py.'
    )
  with tempfile.TemporaryDirectory() as scratch:
    if not workdir:
      workdir = f'{scratch}/run'
      with config.unlocked():
        config.train.total_steps = steps
        config.train.image_log_every = 0
        config.train.checkpoint_every = steps
      trainer.train_and_evaluate(config, workdir)
    # Measured inside: the run's compilation cache is in the temporary folder.
    loaded = inference.load_generator(workdir)
    config = loaded.config
    frames = input_pipeline.make_frame_source(config, 'test')
    size = int(config.image_size)
    examples, truths, skins = [], [], []
    for clip in frames.clips:
      source = frames.frame(clip.first)
      for offset in np.linspace(1, clip.num_frames - 1, pairs_per_clip).round().astype(int):
        driving = frames.frame(clip.first + offset)
        examples.append(input_pipeline.pair_to_example(source, driving))
        truths.append(frames.true_flow(clip.first, clip.first + offset))
        skins.append(driving['mask'][..., 0] > 0)
    batch = jax.tree.map(lambda *items: np.stack(items), *examples)
    truth, skin = np.stack(truths), np.stack(skins)

    def end_point_error(flow) -> float:
      distance = np.linalg.norm(np.asarray(flow) - truth, axis=-1) * (size / 2)
      return float(distance[skin].mean())

    model = loaded(batch)['flow_2d']
    prior = inference.render_fn(loaded.generator, prior_only=True)(loaded.params, batch)['flow_2d']
    return {
      'what': 'flow',
      'image_size': size,
      'step': loaded.step,
      'pairs': len(examples),
      'epe_no_motion_px': round(end_point_error(np.zeros_like(truth)), 4),
      'epe_prior_px': round(end_point_error(prior), 4),
      'epe_model_px': round(end_point_error(model), 4),
    }


def measure_throughput(
  config: ml_collections.ConfigDict, *, num_batches: int, warmup_batches: int
) -> dict[str, Any]:
  """Training pairs per second of the train pipeline (decoded, augmented, batched).

  Builds the pipeline of one process (shard 0 of 1, so the local batch is
  config.train.batch_size), reads `warmup_batches` (worker start-up, file opening, filling the
  prefetch buffer: use at least 2 * num_threads), then times `num_batches`. Wall-clock
  throughput depends on what else runs on the machine; cpu_ms_per_pair (this process's CPU
  time, all threads; None with worker processes, whose CPU time it cannot see) does less.

  Returns:
    dict(pairs_per_sec, num_workers, num_threads, batch_size, image_size, cpu_ms_per_pair).
  """
  if num_batches < 1:
    raise ValueError(f'num_batches must be at least 1, got {num_batches}.')
  dataset = input_pipeline.make_train_dataset(config, shard_index=0, shard_count=1)
  iterator = iter(dataset)
  for _ in range(warmup_batches):
    next(iterator)
  cpu_start = _process_cpu_seconds()
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  seconds = time.perf_counter() - start
  cpu_seconds = _process_cpu_seconds() - cpu_start
  close = getattr(iterator, 'close', None)
  if close is not None:
    close()
  batch_size = int(config.train.batch_size)
  num_pairs = num_batches * batch_size
  num_workers = int(config.data.num_workers)
  return {
    'pairs_per_sec': num_pairs / seconds,
    'num_workers': num_workers,
    'num_threads': max(1, int(config.data.num_threads)),
    'batch_size': batch_size,
    'image_size': int(config.image_size),
    'cpu_ms_per_pair': None if num_workers else 1e3 * cpu_seconds / num_pairs,
  }


def _process_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure_prepare_speed(resolution: int = 256, repeats: int = 1) -> dict[str, float]:
  """Times data.prepare on the demo clip (detection, mesh, iris, crop, encode, write).

  Returns:
    {'prepare_frames_per_sec': frames per second of wall time, best of `repeats`,
     'frames': frames per run, 'seconds': the best run's wall time}. Excludes process start
    and model loading (a warm-up run of one frame loads the models first).
  """
  best = None
  frames = 0
  with tempfile.TemporaryDirectory() as scratch:
    warm = preparation.Options(resolution=resolution, max_frames=2)
    preparation.prepare(
      bundled.carphone_path(), pathlib.Path(scratch) / 'warm', resolution=resolution, options=warm
    )
    for run in range(repeats):
      start = time.perf_counter()
      manifest = preparation.prepare(
        bundled.carphone_path(), pathlib.Path(scratch) / f'run{run}', resolution=resolution
      )
      seconds = time.perf_counter() - start
      frames = manifest['num_frames']
      best = seconds if best is None else min(best, seconds)
  return {'prepare_frames_per_sec': frames / best, 'frames': frames, 'seconds': best}


def measure_prepare_stages(resolution: int = 256) -> dict[str, float]:
  """Data preparation's per-frame work on the demo clip, stage by stage, each in this process
  (the TFLite models run on one thread: their rates are per core).

  Stages, as `preparation.process_clip` runs them: decode (the video's frames), landmarks
  (face.FaceLandmarker: the 478-point mesh with irises, tracked from the previous frame; a frame
  without a track also runs the detectors and a second mesh pass), crop (to `resolution`),
  matte (face.PersonSegmenter on the crop), encode (JPEG crop and PNG matte).

  Returns:
    prepare_<stage>_ms: milliseconds per frame of each stage; prepare_landmark_faces_per_sec
    (all frames) and prepare_tracked_faces_per_sec (the tracked ones, the steady state of a
    clip); prepare_detected_frames (frames that ran the detectors); prepare_stages_frames_per_sec
    (frames per second of the stages' sum).
  """
  path = bundled.carphone_path()
  landmarker, segmenter = face.FaceLandmarker(), face.PersonSegmenter()
  options = preparation.Options(resolution=resolution)
  started = time.perf_counter()
  frames = list(media.read_frames(path))
  seconds = {'decode': time.perf_counter() - started}
  landmarker(frames[0])  # Warm-up: the first invocations allocate.
  segmenter(frames[0])
  landmarker.reset()
  found, tracked_seconds, detected = [], 0.0, 0
  seconds['landmarks'] = 0.0
  for frame in frames:
    tracking = landmarker.tracking
    started = time.perf_counter()
    found.append(landmarker(frame))
    elapsed = time.perf_counter() - started
    seconds['landmarks'] += elapsed
    if tracking:
      tracked_seconds += elapsed
    else:
      detected += 1
  with_face = [points for points in found if points is not None]
  box = crops.crop_box(np.stack(with_face), *frames[0].shape[:2], options.face_fraction)
  started = time.perf_counter()
  images = [crops.crop_frame(frame, box, resolution) for frame in frames]
  seconds['crop'] = time.perf_counter() - started
  started = time.perf_counter()
  mattes = [segmenter(image) for image in images]
  seconds['matte'] = time.perf_counter() - started
  started = time.perf_counter()
  for image, matte in zip(images, mattes, strict=True):
    preparation.encode_image(image, options)
    preparation.encode_matte(matte)
  seconds['encode'] = time.perf_counter() - started
  count = len(frames)
  result = {f'prepare_{stage}_ms': 1000.0 * value / count for stage, value in seconds.items()}
  result['prepare_landmark_faces_per_sec'] = count / seconds['landmarks']
  tracked = count - detected
  result['prepare_tracked_faces_per_sec'] = tracked / tracked_seconds if tracked else None
  result['prepare_detected_frames'] = detected
  result['prepare_stages_frames_per_sec'] = count / sum(seconds.values())
  return result
