"""Generator and discriminator of reenact_jax."""

from reenact_jax.models.discriminator import MultiScaleDiscriminator, make_discriminator
from reenact_jax.models.generator import (
  EXTRA_SOURCE_NAMES,
  INPUT_NAMES,
  MOUTH_CAVITY,
  RENDER_PARTS,
  WARP_PARTS,
  Generator,
  background_fill,
  driving_face,
  example_inputs,
  generator_inputs,
  init_params,
  make_generator,
  prior_render,
  render,
  unseen_mouth,
)

__all__ = [
  'EXTRA_SOURCE_NAMES',
  'INPUT_NAMES',
  'MOUTH_CAVITY',
  'RENDER_PARTS',
  'WARP_PARTS',
  'Generator',
  'MultiScaleDiscriminator',
  'example_inputs',
  'generator_inputs',
  'background_fill',
  'driving_face',
  'init_params',
  'make_discriminator',
  'make_generator',
  'prior_render',
  'render',
  'unseen_mouth',
]
