"""VoxCeleb at 256×256: the paper's setting.

  python -m reenact_jax.train --config=configs/vox256.py --workdir=DIR \
      --config.data.dir=/path/to/shards --config.perceptual.weights_path=/path/to/vgg19.npz

On CPU add --config.model.volume_conv_lowering=depth_in_channels (the same model, its 3D
convolutions run as 2D ones: the 256² step at batch 2 took 29.9 s instead of 43.8 s here).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.image_size = 256
  config.model.compute_dtype = 'bfloat16'
  config.data.source = 'arrayrecord'
  # In-process reader threads, no worker processes. Measured on the 2-core dev machine at 256
  # (carphone shards): ~2.1 ms of CPU per pair, ~500 pairs/s in-process with 1-2 threads, ~230
  # pairs/s through 1-2 grain worker processes (shared-memory hand-over costs more than it
  # saves). A host only needs its share of batch_size per step; on a many-core host raise
  # num_threads, and try num_workers when the GIL limits (`measure_throughput` tells).
  config.data.num_workers = 0
  config.data.num_threads = 2
  config.data.max_frame_gap = 0
  # One source in five with a synthetic hand or object over part of the face (not in the demo:
  # minutes of training do not teach painting over one).
  config.data.source_occluders = 0.2
  config.train.batch_size = 32
  return config
