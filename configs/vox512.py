"""512×512 (HDTF / CelebV-HQ scale): same architecture, a deeper encoder and rematerialisation.

The 3D volume stays at H/4 (128×128) with the same depth; the flow hourglass gets one more
level. Expect to shard parameters with fsdp on large pods.
"""

from configs import vox256


def get_config():
  config = vox256.get_config()
  config.image_size = 512
  config.model.remat = True
  config.model.flow_channels = (32, 64, 128, 256)
  config.model.inpainter_channels = (32, 64, 128, 256, 256)
  config.model.disc_num_scales = 3
  config.train.batch_size = 16
  config.perceptual.scales = (1.0, 0.5, 0.25, 0.125, 0.0625)
  return config
