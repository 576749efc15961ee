"""Tiny model on synthetic data: for tests and smoke runs (seconds per step on one CPU)."""

from configs import base


def get_config():
  config = base.get_config()
  config.image_size = 32
  model = config.model
  model.encoder_channels = (8, 16, 32)
  model.volume_channels = 4
  model.volume_depth = 4
  model.landmark_sigma = 0.15
  model.flow_compress_channels = 2
  model.flow_channels = (8, 16)
  model.projection_channels = 16
  model.renderer_channels = (16, 8)
  model.renderer_num_layers = 1
  model.renderer_num_heads = 2
  model.renderer_token_patch = 1
  model.inpainter_channels = (8, 16)
  model.disc_channels = (8, 16)
  model.disc_num_scales = 2

  config.perceptual.backbone = 'none'

  config.optim.warmup_steps = 2
  config.optim.phase2_warmup_steps = 2
  # No total_steps in the compiled step: runs of different lengths share compiled executables.
  config.optim.schedule = 'constant'
  config.optim.ema_decay = 0.9

  train = config.train
  train.batch_size = 8
  train.total_steps = 10
  train.phase1_steps = 2
  train.log_every = 2
  train.image_log_every = 5
  train.checkpoint_every = 5
  train.max_to_keep = 2

  data = config.data
  data.source = 'synthetic'
  data.synthetic_num_clips = 8
  data.synthetic_frames_per_clip = 8
  return config
