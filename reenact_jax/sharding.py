"""Device mesh and the shardings of the train state and of batches.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism that also
shards parameters and optimizer state, ZeRO-3 style). Batches are split over both.

Parameters are placed by logical axis rules, as in T5X/MaxText: every parameter gets logical
axis names from its path and rank (`logical_axes`: a conv kernel is (None, None, 'in_features',
'out_features'), an attention query kernel ('embed', 'heads', 'head_dim'), ...), and
`config.mesh.param_rules` maps logical names to mesh axes. Optimizer moments and the EMA have
the same paths under another prefix, so they are sharded exactly like their parameter. With
`mesh.fsdp = 1` every rule maps to a size-1 axis and the state is replicated (pure data
parallelism); the same config shards over a pod by setting `mesh.fsdp`.
"""

import math
import re
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = MESH_AXES

# (regular expression on the '/'-joined path, logical axes), first match wins. Ranks that a
# pattern does not fit fall through to the next pattern.
_LOGICAL_AXES = (
  (r'attention/(query|key|value)/kernel$', ('embed', 'heads', 'head_dim')),
  (r'attention/(query|key|value)/bias$', ('heads', 'head_dim')),
  (r'attention/out/kernel$', ('heads', 'head_dim', 'embed')),
  (r'position_embedding$', (None, 'tokens', 'embed')),
  (r'/kernel$', ('in_features', 'out_features')),  # Dense; convs add leading spatial dims.
  (r'/(bias|scale)$', ('out_features',)),
)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """Mesh of all devices with axes ('data', 'fsdp'); -1 in one axis fills the rest."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {'data': int(mesh_config.data), 'fsdp': int(mesh_config.fsdp)}
  unknown = [name for name, size in sizes.items() if size == -1]
  if len(unknown) > 1:
    raise ValueError(f'config.mesh: only one axis may be -1, got {sizes}.')
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f'config.mesh: sizes must be positive or -1, got {sizes}.')
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
  # Process-major device order (jax.devices()): each host's devices are one contiguous block of
  # the batch, which is what make_array_from_process_local_data assembles.
  device_array = np.asarray(devices).reshape(sizes['data'], sizes['fsdp'])
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def path_string(path) -> str:
  """'/'-joined names of a tree_util key path ('generator_params/renderer/enc1/conv1/kernel')."""
  parts = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  return '/'.join(parts)


def logical_axes(path: str, rank: int) -> tuple[str | None, ...]:
  """Logical axis names of a parameter (or of its optimizer moment / EMA) of this rank."""
  for pattern, axes in _LOGICAL_AXES:
    if not re.search(pattern, path):
      continue
    if pattern == r'/kernel$' and rank >= 2:
      return (None,) * (rank - 2) + axes  # Spatial dims of conv kernels stay whole.
    if len(axes) == rank:
      return axes
  return (None,) * rank


def logical_to_spec(
  axes: Sequence[str | None],
  shape: Sequence[int],
  rules: Sequence[tuple[str, str | None]],
  mesh_shape: dict[str, int],
) -> PartitionSpec:
  """flax.linen.logical_to_mesh_axes semantics (per dim, the first rule for its name whose mesh
  axis is still unused), plus: a mesh axis of size 1, or one that does not divide the dim, is
  skipped (that dim stays whole) instead of failing."""
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape, strict=True):
    chosen = None
    for rule_name, mesh_axis in rules:
      if rule_name != name or mesh_axis is None or mesh_axis in used:
        continue
      if mesh_shape.get(mesh_axis, 1) > 1 and size % mesh_shape[mesh_axis] == 0:
        chosen = mesh_axis
        break
    if chosen:
      used.add(chosen)
    spec.append(chosen)
  return PartitionSpec(*spec)


def state_shardings(abstract_state, mesh: Mesh, mesh_config: ml_collections.ConfigDict):
  """A NamedSharding for every leaf of an abstract (eval_shape) train state."""
  rules = [tuple(rule) for rule in mesh_config.param_rules]
  for rule in rules:
    if len(rule) != 2 or (rule[1] is not None and rule[1] not in MESH_AXES):
      raise ValueError(
        f'config.mesh.param_rules: {rule!r} is not (logical_name, mesh_axis) with mesh_axis '
        f'one of {MESH_AXES} or None.'
      )
  min_size = int(mesh_config.fsdp_min_size)
  mesh_shape = dict(mesh.shape)

  def one(path, leaf):
    shape = tuple(leaf.shape)
    if math.prod(shape) < min_size:
      return NamedSharding(mesh, PartitionSpec())
    axes = logical_axes(path_string(path), len(shape))
    return NamedSharding(mesh, logical_to_spec(axes, shape, rules, mesh_shape))

  shardings = jax.tree_util.tree_map_with_path(one, abstract_state)
  _log_sharded_fraction(abstract_state, shardings)
  return shardings


def _log_sharded_fraction(abstract_state, shardings) -> None:
  total = sharded = 0
  for leaf, leaf_sharding in zip(
    jax.tree.leaves(abstract_state), jax.tree.leaves(shardings), strict=True
  ):
    size = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    total += size
    if not leaf_sharding.is_fully_replicated:
      sharded += size
  if sharded:
    logging.info(
      'Train state: %.1f of %.1f MB sharded over the mesh (the rest replicated).',
      sharded / 2**20,
      total / 2**20,
    )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble this process's part of the batch into global arrays sharded on the mesh."""
  sharding = batch_sharding(mesh)
  return {
    key: jax.make_array_from_process_local_data(sharding, value)
    for key, value in local_batch.items()
  }
