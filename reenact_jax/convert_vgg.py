"""Convert public ImageNet VGG19 weights to the file the perceptual loss reads.

  python -m reenact_jax.convert_vgg --input=vgg19_torchvision.npz --output=vgg19.npz

--input: a torchvision VGG19 state dict as .npz or .safetensors, or the Keras VGG19 .h5 (see
reenact_jax/perceptual.py for how to get one). --output: .npz, .safetensors or .msgpack. Every
shape is checked and the written file is read back before the command succeeds.
"""

import sys

import jax
import numpy as np
from absl import app, flags

from reenact_jax import cli, vgg_conversion

_INPUT = flags.DEFINE_string('input', None, 'torchvision state dict (.npz/.safetensors) or .h5.')
_OUTPUT = flags.DEFINE_string('output', None, 'Project weights file: .npz/.safetensors/.msgpack.')
flags.mark_flags_as_required(['input', 'output'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    params = vgg_conversion.convert(_INPUT.value, _OUTPUT.value)
  except (FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  count = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
  print(f'Wrote {_OUTPUT.value}: {count:,} VGG19 parameters (relu1_1 ... relu5_1), checked.')


if __name__ == '__main__':
  cli.run(main)
