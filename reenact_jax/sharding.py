"""Device mesh and the shardings of the train state and of batches.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism that also
shards parameters and optimizer state). Batches are split over both; a parameter is sharded
over `fsdp` along its largest dimension that divides evenly, and replicated otherwise.
"""

import math

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ('data', 'fsdp')
# Parameters smaller than this stay replicated even with fsdp: the all-gather would cost
# more than the memory it saves.
MIN_FSDP_PARAM_SIZE = 2**16


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """Mesh of all devices with axes ('data', 'fsdp'); -1 in one axis fills the rest."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {'data': int(mesh_config.data), 'fsdp': int(mesh_config.fsdp)}
  unknown = [name for name, size in sizes.items() if size == -1]
  if len(unknown) > 1:
    raise ValueError(f'config.mesh: only one axis may be -1, got {sizes}.')
  known = math.prod(size for size in sizes.values() if size != -1)
  if unknown:
    if len(devices) % known:
      raise ValueError(f'config.mesh={sizes}: {len(devices)} devices are not divisible by {known}.')
    sizes[unknown[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(
      f'config.mesh={sizes} needs {math.prod(sizes.values())} devices, but there are '
      f'{len(devices)}. Set one axis to -1 to use every device.'
    )
  device_array = np.asarray(devices).reshape(sizes['data'], sizes['fsdp'])
  return Mesh(device_array, ('data', 'fsdp'), axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _param_spec(shape: tuple[int, ...], fsdp_size: int) -> PartitionSpec:
  if fsdp_size == 1 or math.prod(shape) < MIN_FSDP_PARAM_SIZE:
    return PartitionSpec()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return PartitionSpec(*spec)
  return PartitionSpec()


def state_shardings(abstract_state, mesh: Mesh):
  """A NamedSharding for every leaf of an abstract (eval_shape) train state."""
  fsdp_size = mesh.shape['fsdp']
  return jax.tree.map(
    lambda leaf: NamedSharding(mesh, _param_spec(tuple(leaf.shape), fsdp_size)),
    abstract_state,
  )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble this process's part of the batch into global arrays sharded on the mesh."""
  sharding = batch_sharding(mesh)
  return {
    key: jax.make_array_from_process_local_data(sharding, value)
    for key, value in local_batch.items()
  }
