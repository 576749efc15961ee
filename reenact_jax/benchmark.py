r"""Benchmarks, each printing one JSON line.

  python -m reenact_jax.benchmark --config=configs/base.py \
    --what=warp|step|layers|input|reenact|flow

--what=warp  the project's 3D warp (reenact_jax.warp.warp_3d) against
             jax.scipy.ndimage.map_coordinates(order=1), forward and forward+backward, at the
             config's volume size; prints ONE JSON line.
--what=step  one compiled train step: step_time_ms (median), examples_per_sec, compile_s,
             achieved_flops_per_sec and its fraction of a matmul peak measured in the same run,
             flops_per_step (XLA cost analysis), peak_bytes (XLA memory analysis); --phase=1
             for the warp-only step of training phase 1.
--what=layers each model part's forward and forward+backward time, FLOPs and FLOP/s at the
             config's sizes (encoder, flow_net, projection, renderer, inpainter, warp,
             discriminator, perceptual at two sizes), each backward's and the train step's
             time split into conv weight gradients / other convolutions / matmuls / the rest.
--what=input pairs_per_sec of the train input pipeline (decoded, augmented, batched; median of
             3 runs) and prepare_frames_per_sec of data preparation on the demo clip, split by
             stage (prepare_<stage>_ms: decode, landmarks, crop, matte, encode; landmark
             faces/s per core, tracked and all).
--what=reenact frames_per_sec of the jitted generator and of the exported artifact at batch 1
             and 8 (rendering only, no video decode), and TFLOP per frame (XLA cost analysis).
--what=flow  end-point error (pixels) of the image flow on held-out synthetic pairs (true motion
             known): no motion, the geometric prior alone, and prior + learned correction after
             --steps of training (or the model of --workdir); needs a synthetic-data config.

Timings are the median of `--repeats` runs after compilation, each ended by
`block_until_ready`, as wall time (`*_ms`) and process CPU time (`*_cpu_ms`).
Forward+backward is `jax.vjp` with a fixed random cotangent (the way the gradient arrives
from the layers above in training), giving gradients w.r.t. both the volume and the flow.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from reenact_jax import benchmarks, cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Configuration file.', lock_config=True)
_WHAT = flags.DEFINE_enum(
  'what', 'warp', ['warp', 'step', 'layers', 'input', 'reenact', 'flow'], 'What to benchmark.'
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  '',
  "--what=reenact or flow: use this run's newest checkpoint (default: reenact with fresh "
  'parameters; flow trains --steps steps first).',
)
_PHASE = flags.DEFINE_enum(
  'phase', '2', ['1', '2'], '--what=step: training phase 1 (warp only) or 2 (everything).'
)
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed runs after compilation (median is kept).')
_STEPS = flags.DEFINE_integer('steps', 300, '--what=flow: training steps before measuring.')
_BATCH = flags.DEFINE_integer(
  'batch', 0, 'Warp batch size; 0: train.batch_size // device_count (at most 4 on CPU).'
)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    if _WHAT.value == 'warp':
      result = benchmarks.benchmark_warp(config, batch=_BATCH.value, repeats=_REPEATS.value)
    elif _WHAT.value == 'step':
      result = benchmarks.benchmark_step(
        config, repeats=_REPEATS.value, warp_only=_PHASE.value == '1'
      )
    elif _WHAT.value == 'layers':
      result = benchmarks.benchmark_layers(config, repeats=_REPEATS.value)
    elif _WHAT.value == 'input':
      result = benchmarks.benchmark_input(config)
    elif _WHAT.value == 'flow':
      result = benchmarks.benchmark_flow(config, steps=_STEPS.value, workdir=_WORKDIR.value)
    else:
      result = benchmarks.benchmark_reenact(config, repeats=_REPEATS.value, workdir=_WORKDIR.value)
  except (ValueError, FileNotFoundError) as error:  # Wrong config or workdir, missing run.
    print(f'error: {cli.error_line(error)}', file=sys.stderr)
    sys.exit(1)
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(main)
