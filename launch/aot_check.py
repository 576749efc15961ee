r"""Ahead-of-time compile of the train step: does the config fit in device memory?

  python launch/aot_check.py --config=configs/vox256.py [--config.train.batch_size=64]

Compiles both training phases for the devices of this machine (on CPU, fake devices:
XLA_FLAGS=--xla_force_host_platform_device_count=8) without allocating the state, and prints
one JSON line per phase with the per-device memory XLA plans (arguments, outputs, temporaries)
and the FLOPs of one step. Run it on one host of the target accelerator type before a long job.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)


def main(argv):
  del argv
  from reenact_jax import trainer

  setup = trainer.Setup(_CONFIG.value)
  for warp_only in (True, False):
    compiled = setup.lower_train_step(warp_only=warp_only).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    print(
      json.dumps(
        {
          'phase': 1 if warp_only else 2,
          'devices': int(setup.mesh.size),
          'mesh': dict(setup.mesh.shape),
          'argument_bytes': int(memory.argument_size_in_bytes),
          'output_bytes': int(memory.output_size_in_bytes),
          'temp_bytes': int(memory.temp_size_in_bytes),
          'peak_bytes_estimate': int(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
          ),
          'flops_per_step': float(cost.get('flops', 0.0)),
        }
      ),
      flush=True,
    )


if __name__ == '__main__':
  app.run(main)
