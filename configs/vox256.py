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
  config.data.num_workers = 8
  config.data.max_frame_gap = 0
  config.train.batch_size = 32
  config.train.compilation_cache_dir = '/tmp/reenact_jax_xla_cache'
  return config
