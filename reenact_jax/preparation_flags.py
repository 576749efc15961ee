"""The flags data.prepare and data.prepare_beam share, and the arguments they give the library.

_PREPARATION = preparation_flags.define()     # at module level in the command
preparation.prepare(**_PREPARATION())        # or preparation_beam.build(pipeline, **...)
"""

import dataclasses
from collections.abc import Callable

from absl import flags

from reenact_jax import dataset_layouts, preparation


def define() -> Callable[[], dict]:
  """Defines the shared flags (dashed spellings too); returns what gives their values as the
  keyword arguments of preparation.prepare and preparation_beam.build."""
  input_path = flags.DEFINE_string('input', None, 'A folder of clips or one video file.')
  output = flags.DEFINE_string('output', None, 'Folder for the shards (created; may be gs://).')
  resolution = flags.DEFINE_integer('resolution', 256, 'Side of the square crops, pixels.')
  layout = flags.DEFINE_enum(
    'layout', 'auto', dataset_layouts.LAYOUTS, 'How the input names identities and splits.'
  )
  split = flags.DEFINE_enum(
    'split',
    'keep',
    preparation.SPLIT_CHOICES,
    "keep: the dataset's own train/test split where the layout has one; by_identity: hold out "
    '--test_fraction of the identities.',
  )
  test_fraction = flags.DEFINE_float('test_fraction', 0.1, 'Fraction of identities held out.')
  face_fraction = flags.DEFINE_float(
    'face_fraction', preparation.Options.face_fraction, 'Face extent over the crop side.'
  )
  image_format = flags.DEFINE_enum('image_format', 'jpeg', ['jpeg', 'png'], 'Frame encoding.')
  max_frames = flags.DEFINE_integer('max_frames', 0, 'Frames per clip (0: all).')
  records_per_shard = flags.DEFINE_integer(
    'records_per_shard', preparation.DEFAULT_RECORDS_PER_SHARD, 'Records per shard file.'
  )
  overwrite = flags.DEFINE_bool('overwrite', False, 'Replace prepared data in --output.')
  flags.mark_flags_as_required(['input', 'output'])
  for name in ('test_fraction', 'face_fraction', 'image_format', 'max_frames', 'records_per_shard'):
    flags.DEFINE_alias(name.replace('_', '-'), name)

  def arguments() -> dict:
    options = dataclasses.replace(
      preparation.Options(resolution=resolution.value),
      face_fraction=face_fraction.value,
      image_format=image_format.value,
      max_frames=max_frames.value,
    )
    return dict(
      input_path=input_path.value,
      output=output.value,
      resolution=resolution.value,
      test_fraction=test_fraction.value,
      overwrite=overwrite.value,
      records_per_shard=records_per_shard.value,
      options=options,
      layout=layout.value,
      split=split.value,
    )

  return arguments
