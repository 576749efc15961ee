"""Generator and discriminator of reenact_jax."""

from reenact_jax.models.discriminator import MultiScaleDiscriminator, make_discriminator
from reenact_jax.models.generator import (
  INPUT_NAMES,
  Generator,
  example_inputs,
  init_params,
  make_generator,
  render,
)

__all__ = [
  'INPUT_NAMES',
  'Generator',
  'MultiScaleDiscriminator',
  'example_inputs',
  'init_params',
  'make_discriminator',
  'make_generator',
  'render',
]
