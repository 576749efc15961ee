"""VoxCeleb at 256×256: the paper's setting (DESIGN.md §2 sizes).

  python -m reenact_jax.train --config=configs/vox256.py --workdir=DIR \
      --config.data.dir=/path/to/shards --config.perceptual.weights_path=/path/to/vgg19.npz
"""

from configs import base


def get_config():
  config = base.get_config()
  config.image_size = 256
  config.model.compute_dtype = 'bfloat16'
  config.data.source = 'arrayrecord'
  # In-process reader threads, no worker processes: measured on the 2-core dev machine at 256,
  # a pair costs ~2.7 ms of CPU in-process and about twice that through a grain worker process
  # (shared-memory hand-over), and a host needs only its share of batch_size per step. On a
  # many-core host raise num_threads; use num_workers when the GIL limits (input_pipeline
  # .measure_throughput, `python -m reenact_jax.benchmark --what=input`, tells).
  config.data.num_workers = 0
  config.data.num_threads = 4
  config.data.max_frame_gap = 0
  config.train.batch_size = 32
  config.train.compilation_cache_dir = '/tmp/reenact_jax_xla_cache'
  return config
