"""Generator and discriminator of reenact_jax (DESIGN §2)."""

from reenact_jax.models.discriminator import MultiScaleDiscriminator, make_discriminator
from reenact_jax.models.generator import Generator, make_generator, render

__all__ = ['Generator', 'MultiScaleDiscriminator', 'make_discriminator', 'make_generator', 'render']
