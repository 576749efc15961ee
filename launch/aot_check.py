r"""Ahead-of-time compile of the train step for a mesh: does the config fit, and at what cost?

  python -m launch.aot_check --config=configs/vox256.py --mesh=data:64 --platform=cpu
  python -m launch.aot_check --config=configs/vox512.py --mesh=data:16,fsdp:4 --batch_per_device=2
  python -m launch.aot_check --config=configs/vox256.py --tpu_topology=v4:4x4x4   # needs libtpu

Lowers and compiles both training phases for the mesh without allocating the state or running a
step, and prints one JSON line per phase: per-device bytes XLA plans (arguments, outputs,
temporaries, and their sum less the donated aliases) and the FLOPs of one step (whole mesh and
per device). With --platform=cpu the mesh is made of fake host devices, so a 64-chip mesh is
checked on a laptop before renting the chips; the byte counts are then XLA:CPU's plan, a close
estimate of (not equal to) what XLA:TPU/GPU plans. With --platform=tpu or gpu, run it on one host
of the target: it uses that host's devices.

With --tpu_topology (e.g. 'v4:2x2x1', 'v5e:4x4', 'v5p:4x4x4') the step is compiled by XLA:TPU for
that slice without any TPU present (libtpu's deviceless compilation; `pip install
"libtpu==0.0.42.*"`, which `make setup ACCELERATOR=tpu` does): the exact TPU memory plan, which
is what to trust for rematerialisation, since XLA:CPU schedules recomputation early and so shows
almost none of its saving.
"""

import importlib.util
import json
import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_MESH = flags.DEFINE_string(
  'mesh',
  '',
  "Mesh shape, e.g. 'data:64' or 'data:16,fsdp:4' (default: the config's mesh "
  'over the devices present).',
)
_PLATFORM = flags.DEFINE_enum(
  'platform', 'cpu', ['cpu', 'tpu', 'gpu'], 'cpu: fake host devices in the shape of --mesh.'
)
_BATCH_PER_DEVICE = flags.DEFINE_integer(
  'batch_per_device', 0, 'Set train.batch_size to this times the mesh size (0: keep the config).'
)
_TPU_TOPOLOGY = flags.DEFINE_string(
  'tpu_topology',
  '',
  "Compile for this Cloud TPU slice without TPUs, e.g. 'v4:2x2x1', 'v5e:4x4', 'v5p:2x2x1' "
  '(needs libtpu; overrides --platform; the mesh must have one device per chip).',
)
flags.mark_flags_as_required(['config'])

GIB = 2**30
# High-bandwidth memory per chip, GiB (vendor figures), for the 'fits' column.
HBM_GIB = {'tpu_v4': 32, 'tpu_v5e': 16, 'tpu_v5p': 95, 'h100': 80}
# Chip configuration per TPU generation: v4 and v5p chips have two TensorCores run as one device.
TPU_CHIP_CONFIG = {'v4': 'megacore', 'v5p': 'megacore', 'v5e': 'default', 'v6e': 'default'}


def tpu_topology_devices(topology: str) -> list:
  """The devices of a Cloud TPU slice, for compiling without TPUs (libtpu's deviceless AOT)."""
  generation = topology.partition(':')[0]
  if generation not in TPU_CHIP_CONFIG or ':' not in topology:
    raise app.UsageError(
      f'--tpu_topology={topology!r}: expected GENERATION:SHAPE with a generation in '
      f"{sorted(TPU_CHIP_CONFIG)}, e.g. 'v4:2x2x1', 'v5e:4x4' or 'v5p:4x4x4'."
    )
  if importlib.util.find_spec('libtpu') is None:
    raise app.UsageError(
      '--tpu_topology needs libtpu, which is not installed: pip install "libtpu==0.0.42.*" '
      '(or make setup ACCELERATOR=tpu). It compiles for TPU on this machine, no TPU needed.'
    )
  from jax.experimental import topologies

  try:
    description = topologies.get_topology_desc(
      platform='tpu', topology_name=topology, chip_config_name=TPU_CHIP_CONFIG[generation]
    )
  except Exception as error:  # libtpu's message names what is wrong with the shape.
    raise app.UsageError(f'--tpu_topology={topology!r}: libtpu rejects it: {error}') from error
  return list(description.devices)


def parse_mesh(text: str) -> dict[str, int]:
  """'data:8,fsdp:4' -> {'data': 8, 'fsdp': 4}; an unknown axis or a bad size is an error."""
  sizes = {'data': 1, 'fsdp': 1}
  for part in filter(None, text.split(',')):
    name, _, size = part.partition(':')
    if name not in sizes or not size.lstrip('-').isdigit() or int(size) == 0:
      raise app.UsageError(
        f"--mesh={text!r}: expected comma-separated 'axis:size' with axes data, fsdp "
        "(e.g. 'data:64' or 'data:16,fsdp:4')."
      )
    sizes[name] = int(size)
  if any(size == -1 for size in sizes.values()):
    raise app.UsageError(f'--mesh={text!r}: give every size explicitly (no -1) for a check.')
  return sizes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  mesh = parse_mesh(_MESH.value) if _MESH.value else None
  if _TPU_TOPOLOGY.value:
    os.environ['JAX_PLATFORMS'] = 'cpu'  # Nothing runs; the TPU devices are descriptions.
    # libtpu otherwise locks /tmp/libtpu_lockfile, so that two checks could not run at once.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  elif _PLATFORM.value == 'cpu':
    # Before JAX starts: as many fake host devices as the mesh has.
    count = math.prod(mesh.values()) if mesh else 8
    os.environ['JAX_PLATFORMS'] = 'cpu'
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={count}'
    )
  else:
    os.environ['JAX_PLATFORMS'] = _PLATFORM.value
  with config.unlocked():
    if mesh:
      config.mesh.data, config.mesh.fsdp = mesh['data'], mesh['fsdp']
  import jax  # Only now: after XLA_FLAGS and JAX_PLATFORMS are set.

  from reenact_jax import sharding, trainer

  devices = tpu_topology_devices(_TPU_TOPOLOGY.value) if _TPU_TOPOLOGY.value else jax.devices()
  if _BATCH_PER_DEVICE.value:
    config.train.batch_size = _BATCH_PER_DEVICE.value * len(devices)
  try:
    setup = trainer.Setup(
      config, sharding.make_mesh(config.mesh, devices), abstract_perceptual=True
    )
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  for warp_only in (True, False):
    compiled = setup.lower_train_step(warp_only=warp_only).compile()
    print(json.dumps(summarize(compiled, setup, warp_only=warp_only)), flush=True)


def summarize(compiled, setup, *, warp_only: bool) -> dict:
  """Per-device memory and FLOPs of a compiled train step, as one JSON-able dict."""
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  devices = int(setup.mesh.size)
  peak = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )
  # XLA's cost analysis of an SPMD-partitioned program counts one device's share.
  flops_per_device = float(cost.get('flops', 0.0))
  return {
    'phase': 1 if warp_only else 2,
    'platform': setup.mesh.devices.flat[0].platform,
    'device_kind': setup.mesh.devices.flat[0].device_kind,
    'mesh': dict(setup.mesh.shape),
    'devices': devices,
    'batch_size': int(setup.config.train.batch_size),
    'batch_per_device': int(setup.config.train.batch_size) // devices,
    'compute_dtype': setup.config.model.compute_dtype,
    'remat': bool(setup.config.model.remat),
    'argument_bytes': int(memory.argument_size_in_bytes),
    'output_bytes': int(memory.output_size_in_bytes),
    'temp_bytes': int(memory.temp_size_in_bytes),
    'alias_bytes': int(memory.alias_size_in_bytes),
    'peak_bytes_per_device': int(peak),
    'peak_gib_per_device': round(peak / GIB, 3),
    'fits': {name: bool(peak < 0.9 * gib * GIB) for name, gib in HBM_GIB.items()},
    'flops_per_device': flops_per_device,
    'flops_per_step': flops_per_device * devices,
  }


if __name__ == '__main__':
  app.run(main)
