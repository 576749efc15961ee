"""Where a compiled program's time goes, by kind of operation, read from a profiler trace.

`hlo_kinds` sorts the instructions of the optimised HLO (`compiled.as_text()`) into kinds:

  conv2d_weight_grad  2D convolutions whose window spans the whole output gradient: the
                      gradient of a convolution's kernel (kernel-sized output, image-sized
                      window);
  conv2d              every other 2D convolution: forward passes and input gradients;
  conv3d              3D convolutions, all three;
  matmul              dot products (attention, dense layers);
  other               the rest: elementwise fusions, copies and transposes, reductions, gathers.

A fusion takes the kind of what it calls. `profile_kinds` runs a compiled program under
`jax.profiler`, matches each traced event to its instruction by name and sums the durations
by kind, per call. Where XLA runs independent instructions at once on several threads, the
kinds add up to more than the wall time; where none runs (dispatch, waiting on a dependency),
to less. XLA:CPU's 3D convolutions run asynchronously after their traced event has ended: the
trace shows their dispatch only, and their time lands in `unattributed_ms` (wall time minus
the kinds), which is why conv3d is reported at all.
"""

import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax

KINDS = ('conv2d_weight_grad', 'conv2d', 'conv3d', 'matmul', 'other')

_COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) .*\{$')
_INSTRUCTION = re.compile(r'^\s+(?:ROOT )?%([\w.\-]+) = (.*)$')
_OP = re.compile(r'[\]})] ([a-z][\w\-]*)\(')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_WINDOW = re.compile(r'window=\{size=([\dx]+)')
_DIM_LABELS = re.compile(r'dim_labels=\w+_\w+->(\w+)')
_SHAPE = re.compile(r'\w+\[([\d,]*)\]')
# Control flow: their bodies' instructions are traced one by one, so the outer event is not
# counted again.
_CONTAINERS = frozenset({'while', 'conditional', 'call'})


def convolution_kind(instruction: str) -> str:
  """'conv2d_weight_grad', 'conv2d' or 'conv3d' for one HLO convolution instruction's text."""
  window = _WINDOW.search(instruction)
  labels = _DIM_LABELS.search(instruction)
  shape = _SHAPE.search(instruction)
  if not (window and labels and shape):
    return 'conv2d'
  dims = [int(size) for size in shape.group(1).split(',') if size]
  spatial = [dims[i] for i, label in enumerate(labels.group(1)) if label.isdigit()]
  if len(spatial) == 3:
    return 'conv3d'
  window_size = math.prod(int(size) for size in window.group(1).split('x'))
  return 'conv2d_weight_grad' if window_size > math.prod(spatial) else 'conv2d'


def hlo_kinds(hlo_text: str) -> dict[str, str]:
  """Instruction name -> kind (one of KINDS) for every countable instruction of the module."""
  # Computation -> its instructions as (name, op, called computation or None, own kind or None).
  computations: dict[str, list[tuple[str, str, str | None, str | None]]] = {}
  current = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = computations.setdefault(header.group(1), [])
      continue
    instruction = _INSTRUCTION.match(line)
    if instruction and current is not None:
      name, text = instruction.groups()
      op = _OP.search(text)
      op = op.group(1) if op else ''
      called = _CALLS.search(text)
      own = convolution_kind(text) if op == 'convolution' else 'matmul' if op == 'dot' else None
      current.append((name, op, called.group(1) if called else None, own))

  fused = {called for instructions in computations.values() for _, _, called, _ in instructions}
  kinds = {}
  for computation, instructions in computations.items():
    if computation in fused:  # A fusion runs as one traced event.
      continue
    for name, op, called, own in instructions:
      if op in _CONTAINERS:
        continue
      if op == 'fusion' and called:
        found = {inner for _, _, _, inner in computations.get(called, ())}
        kinds[name] = next((kind for kind in KINDS if kind in found), 'other')
      else:
        kinds[name] = own or 'other'
  return kinds


def _trace_events(trace_dir: str) -> list[tuple[str, float]]:
  """(name, duration in ms) of every event in the trace written to trace_dir."""
  events = []
  for path in Path(trace_dir).rglob('*.xplane.pb'):
    for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
      for line in plane.lines:
        events.extend((event.name, event.duration_ns / 1e6) for event in line.events)
  return events


def profile_kinds(run: Callable[[], object], hlo_text: str, *, repeats: int = 3) -> dict:
  """Milliseconds per call of each kind of instruction, and the median wall time per call.

  Args:
    run: makes one call of the compiled program whose HLO text is `hlo_text` and returns its
      outputs (a train step keeps its donated state between calls itself); it is called once
      untraced, then `repeats` times traced.
    repeats: traced calls; the kinds are their mean, the wall time their median.

  Returns:
    {'<kind>_ms': ... for every kind in KINDS, 'wall_ms': ..., 'unattributed_ms': the wall time
    not covered by the kinds (0 when they overlap more than that)}.
  """
  kinds = hlo_kinds(hlo_text)
  jax.block_until_ready(run())
  walls = []
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    try:
      for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run())
        walls.append(time.perf_counter() - started)
    finally:
      jax.profiler.stop_trace()
    events = _trace_events(trace_dir)
  totals = dict.fromkeys(KINDS, 0.0)
  for name, duration_ms in events:
    if name in kinds:
      totals[kinds[name]] += duration_ms
  result = {f'{kind}_ms': round(total / repeats, 3) for kind, total in totals.items()}
  result['wall_ms'] = round(1e3 * statistics.median(walls), 3)
  result['unattributed_ms'] = round(max(0.0, result['wall_ms'] - sum(totals.values()) / repeats), 3)
  return result
