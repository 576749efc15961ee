"""A prepared folder as a tensorflow-datasets dataset, read in place (no copy, no TensorFlow).

    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(prepared_dir)
    frames = builder.as_data_source('train')
    frames[0]['image']  # (H, W, 3) uint8

Data preparation writes dataset_info.json and features.json beside the shards
(preparation.tfds_metadata); features.json names FrameRecord, which tfds imports from here to
decode each record (reenact_jax/records.py) instead of parsing a tf.Example. Needs the 'tfds'
extra.
"""

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from reenact_jax import records

_TensorInfo = tfds.features.TensorInfo


class FrameRecord(tfds.features.FeatureConnector):
  """One prepared frame: the record's fields decoded as records.decode_record gives them."""

  def get_tensor_info(self) -> dict[str, Any]:
    return {
      'image': _TensorInfo(shape=(None, None, 3), dtype=np.uint8),
      'matte': _TensorInfo(shape=(None, None), dtype=np.uint8),
      'landmarks': _TensorInfo(shape=(None, 3), dtype=np.float32),
      'mask_polygon': _TensorInfo(shape=(None, 2), dtype=np.float32),
      'pose': {
        'rotation': _TensorInfo(shape=(3, 3), dtype=np.float32),
        'translation': _TensorInfo(shape=(3,), dtype=np.float32),
        'scale': _TensorInfo(shape=(), dtype=np.float32),
      },
      'identity': _TensorInfo(shape=(), dtype=np.object_),
      'clip': _TensorInfo(shape=(), dtype=np.object_),
      'frame_index': _TensorInfo(shape=(), dtype=np.int64),
    }

  def encode_example(self, example_data):
    raise NotImplementedError('Frames are written by data.prepare (records.encode_record).')

  def deserialize_example_np(self, serialized_example, *, decoders=None) -> dict[str, Any]:
    del decoders  # The record's own decoding; tfds decoders apply to tf.Example features.
    return records.decode_record(bytes(serialized_example))

  @classmethod
  def from_json_content(cls, value, doc=None) -> 'FrameRecord':
    del value, doc
    return cls()

  def to_json_content(self) -> dict:
    return {}
