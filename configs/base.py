"""Every configuration key of reenact_jax, with its default and meaning.

Other configs start from `get_config()` here and change values; they never add keys, so a
misspelt key on the command line (`--config.trian.lr=...`) is an error, not a silent no-op.
Sizes below are for 256×256 training.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.image_size = 256  # H = W of every training frame, pixels.
  # Short form of train.total_steps (`--config.total_steps=N`); the two are one value.
  config.total_steps = 300_000

  # ---------------------------------------------------------------- model (generator)
  config.model = model = ml_collections.ConfigDict()
  model.num_landmarks = 478  # MediaPipe face mesh with irises.
  model.compute_dtype = 'float32'  # 'float32' or 'bfloat16' (parameters stay float32).
  # The 3D convolutions of the volume (encoder's last block, flow hourglass): '3d' (k^3) or
  # '2+1d' (a k×k conv per depth slice, then k taps along depth): fewer weights, and about 10x
  # faster on XLA:CPU, whose 3D convolutions are slow; accelerators run '3d' well.
  model.volume_convs = '3d'
  # How '3d' runs, same weights and result: 'xla' (accelerators) or 'depth_in_channels' (one 2D
  # convolution of the depth-shifted copies side by side: 2-3x faster fwd+bwd on XLA:CPU).
  model.volume_conv_lowering = 'xla'
  model.remat = False  # Rematerialise the big blocks (flow hourglass, renderer) on backward.
  # Appearance encoder: S (H, W, 3) -> (H/4, W/4, volume_channels * volume_depth).
  model.encoder_channels = (64, 128, 256)  # Stem, then one 2× downsampling block each after.
  model.volume_channels = 32  # C of the 3D feature volume.
  model.volume_depth = 16  # D of the 3D feature volume.
  # Geometric flow prior.
  model.landmark_sigma = 0.08  # Gaussian radius of the non-rigid residual, normalised units.
  # 3D flow hourglass.
  model.flow_compress_channels = 4  # Channels of the compressed source volume fed to F.
  model.flow_channels = (32, 64, 128)  # Per encoder level of the 3D U-Net.
  # tanh-bounded amplitude of the learned residual flow, normalised units (the volume spans 2):
  # 0.15 reaches 0.15 * 64 / 2 = 4.8 voxels (19 pixels) at 256x256, where the prior cannot
  # (neck, shoulders, hair tips, lips, teeth).
  model.flow_residual_scale = 0.15
  # Each pixel shows the depth slices of the 3D flow weighted by softmax over depth of
  # (learned logits + this * prior confidence): the slice of the face surface, at first.
  model.visibility_sharpness = 8.0
  # Several source views (reenact --source a --source b, data.num_sources): per voxel, softmax
  # over the views of this * how squarely each view saw the face there (models.fusion).
  model.fusion_sharpness = 8.0
  # A learned fusion head on each view's warped features, trained with data.num_sources > 1
  # (False: the geometric weights alone, which a model trained with one source uses).
  model.fusion_head = False
  # The eyes move by their own landmark meshes (models.generator.eye_flow): lids close over the
  # eye and irises turn, finer than the feature volume's grid can (False: as runs saved before).
  model.eye_mesh = True
  # The neck stretches between the moving head and the still shoulders (geometry.neck_region)
  # instead of leaving a gap under the chin (False: as runs saved before).
  model.neck_follows = True
  # The lips move by their own landmark mesh and the mouth's opening with the skull
  # (models.generator.mouth_flow): the teeth keep their shape instead of stretching into fangs
  # when the mouth opens (False: as runs saved before).
  model.mouth_mesh = True
  # Projection 3D -> 2D and the projected-RGB head.
  model.projection_channels = 256
  # Foreground renderer (TransUNet-style).
  # It paints (the mouth's inside, disocclusions) starting from the warped source it is given,
  # the mouth's dark inside included, not from grey, and keeps the driving face (oval and unseen
  # mouth) as the person, never the background (False: as runs saved before).
  model.paint_from_warped = True
  # The person's outline is the moved source person where the warp has the source's pixels; the
  # renderer's alpha only where it has none (False: as runs saved before, the renderer's alpha
  # everywhere).
  model.alpha_from_warp = True
  model.renderer_channels = (128, 64)  # Decoder widths after the bottleneck (each one 2× up).
  # Renderer encoder: 2× downsampling residual blocks from H/4 to the bottleneck (widths
  # projection_channels * 2^i); its decoder climbs back to H/4 with skip connections, then
  # renderer_channels does H/4 -> H.
  model.renderer_down_levels = 1
  model.renderer_bottleneck = 'transformer'  # 'transformer' or 'resblocks'.
  model.renderer_num_layers = 2  # Transformer layers (or residual blocks) in the bottleneck.
  model.renderer_num_heads = 4
  model.renderer_token_patch = 2  # Patchify the bottleneck map by this before attention.
  # Background inpainter (gated-conv U-Net).
  model.inpainter_channels = (32, 64, 128, 256)
  # Discriminator.
  model.disc_channels = (64, 128, 256, 512)
  model.disc_num_scales = 2

  # ---------------------------------------------------------------- losses
  config.loss = loss = ml_collections.ConfigDict()
  # End-point error (pixels) of the image flow on the pairs whose true motion is known
  # (pseudo-pairs, synthetic clips); 0 elsewhere.
  loss.flow = 1.0
  loss.cyclic_warp = 10.0
  loss.cyclic_backward = 1.0  # Relative weight of the backward (D->S) half of L_cyc.
  loss.cyclic_face = 1.0  # Extra weight of the face (oval) inside the person in L_cyc.
  loss.perceptual = 10.0  # On the composite output.
  loss.perceptual_projected = 10.0  # On the projected RGB of the warped volume.
  loss.l1 = 10.0
  # The renderer's foreground against the warped source pixels on the driving face, where the
  # warp is valid (it paints only what the warp cannot show).
  loss.keep_source = 3.0
  loss.alpha = 1.0
  loss.inpaint = 5.0
  loss.gan = 1.0
  loss.feature_matching = 10.0

  config.perceptual = perceptual = ml_collections.ConfigDict()
  # 'vgg19' needs `weights_path` (converted with `python -m reenact_jax.perceptual convert`).
  # 'none' disables the perceptual terms; the run says so once in its log.
  perceptual.backbone = 'vgg19'
  perceptual.weights_path = ''
  perceptual.scales = (1.0, 0.5, 0.25, 0.125)
  perceptual.layer_weights = (1.0, 1.0, 1.0, 1.0, 1.0)  # relu1_1 ... relu5_1.

  # ---------------------------------------------------------------- optimisation
  config.optim = optim = ml_collections.ConfigDict()
  optim.generator_lr = 2e-4
  optim.discriminator_lr = 2e-4
  optim.b1 = 0.5
  optim.b2 = 0.999
  optim.warmup_steps = 1000
  optim.schedule = 'cosine'  # 'cosine' or 'constant' (after warmup).
  # Length of the cosine decay; 0: train.total_steps. Set it when a run will be extended with a
  # larger total_steps, so that resuming does not change the schedule.
  optim.decay_steps = 0
  # Warmup of the parts that start training in phase 2 (renderer, inpainter, discriminator),
  # counted from the phase switch: they have their own Adam state and schedule.
  optim.phase2_warmup_steps = 500
  optim.grad_clip_norm = 1.0
  optim.ema_decay = 0.999

  # ---------------------------------------------------------------- training loop
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32  # Global, across all devices and hosts.
  train.total_steps = config.get_ref('total_steps')
  train.phase1_steps = 20_000  # Warp-only phase (E, F, P with L_cyc + projected perceptual).
  train.log_every = 100
  train.image_log_every = 2000
  train.checkpoint_every = 2000
  train.max_to_keep = 3
  train.eval_every = 0  # 0: no periodic evaluation inside training.
  train.transfer_guard = True  # jax_transfer_guard='disallow' around the step.
  # Local directory for this process's logs, copied to the workdir at every checkpoint ('' =
  # the workdir itself, or a temporary directory when the workdir is gs:// or another store).
  train.local_log_dir = ''
  train.grad_accum_steps = 1  # Micro-batches per optimizer step (same batch, less memory).
  # Persistent XLA cache: '' = WORKDIR/compilation_cache (unless JAX_COMPILATION_CACHE_DIR is
  # set), 'none' = off, or a path shared by runs.
  train.compilation_cache_dir = ''

  # ---------------------------------------------------------------- mesh
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # -1: fill with all devices not used by other axes.
  mesh.fsdp = 1  # Parameter / optimizer-state sharding axis (ZeRO-3 style).
  # Logical axis name -> mesh axis, for parameters, their optimizer moments and EMA (see
  # reenact_jax/sharding.py for the names). Per dimension the first rule whose mesh axis is
  # unused and divides it applies; every other dimension stays whole.
  mesh.param_rules = (
    ('in_features', 'fsdp'),
    ('out_features', 'fsdp'),
    ('embed', 'fsdp'),
    ('heads', 'fsdp'),
    ('tokens', 'fsdp'),
  )
  mesh.fsdp_min_size = 2**16  # Smaller leaves stay replicated (the all-gather costs more).

  # ---------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  # 'arrayrecord' (shards in data.dir), 'demo' (the bundled carphone clip, prepared on first
  # use into data.cache_dir) or 'synthetic' (procedural heads, for tests and smoke runs).
  data.source = 'arrayrecord'
  data.dir = ''  # Folder written by `python -m data.prepare`.
  data.cache_dir = ''  # Where 'demo' data and portraits are prepared ('' = ~/.cache/reenact_jax).
  data.num_workers = 0  # grain worker processes (0: in-process).
  data.num_threads = 2  # Reader threads per process (decoding and augmentation release the GIL).
  data.prefetch = 2  # Batches prefetched to device.
  data.skip_corrupt = False  # True: count, log and skip records that fail to decode.
  data.flip = True
  data.color_jitter = 0.1  # Max relative brightness/contrast/saturation change.
  # The probability that a training source gets a synthetic occluder (a hand or an object over
  # part of the face, reenact_jax/occlusion.py) that its driving frame does not show: the model
  # learns not to carry an occluder of the source into the output.
  data.source_occluders = 0.0
  data.scale_jitter = 0.05  # Max relative scale change (same for source and driving).
  data.translate_jitter = 0.05  # Max translation, fraction of the image size.
  data.max_frame_gap = 0  # 0: any two frames of a clip; N: |i - j| <= N.
  # Source views per training pair, all from the pair's clip (1: one source image). With more,
  # set model.fusion_head=True to learn the fusion.
  data.num_sources = 1
  data.pseudo_pair_fraction = 0.0  # Fraction of pairs made from re-posed still portraits.
  data.pseudo_max_rotation_deg = 15.0  # In-plane rotation of a re-posed portrait.
  data.pseudo_max_scale = 0.08  # Relative scale change.
  data.pseudo_max_translation = 0.08  # Normalised units.
  data.pseudo_max_deformation = 0.03  # Smooth non-rigid motion, fraction of the face size.
  data.synthetic_num_clips = 64
  data.synthetic_frames_per_clip = 32

  # ---------------------------------------------------------------- evaluation
  config.eval = ev = ml_collections.ConfigDict()
  ev.split = 'test'
  ev.max_clips = 0  # 0: every test clip.
  ev.batch_size = 16
  ev.lpips_weights_path = ''
  ev.identity_weights_path = ''
  return config
