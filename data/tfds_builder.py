"""The prepared frames as a tensorflow-datasets builder (ArrayRecord files, no TensorFlow).

    import tensorflow_datasets as tfds
    from data import tfds_builder  # registers 'reenact_frames'

    source = tfds_builder.data_source(prepared_dir, tfds_data_dir, split='train')
    # or, equivalently:
    source = tfds.data_source(
      'reenact_frames', split='train', data_dir=tfds_data_dir,
      download_and_prepare_kwargs={'file_format': 'array_record',
        'download_config': tfds.download.DownloadConfig(manual_dir=prepared_dir)})
    source[0]['image']  # (H, W, 3) uint8

The builder reads a folder written by `python -m data.prepare` (its manual_dir) and writes the
same frames as tfds examples: the encoded image bytes pass through unchanged; landmarks (N, 3),
mask polygon (K, 2) and pose are float32; identity, clip and frame_index identify the frame.
The training pipeline reads the prepared shards directly (reenact_jax/records.py); this builder
is for tools that speak tfds.
"""

import pathlib

import msgpack
import numpy as np
import tensorflow_datasets as tfds

from reenact_jax import records


class ReenactFrames(tfds.core.GeneratorBasedBuilder):
  """Face-reenactment frames: crops, 478 landmarks, face-oval polygons, head poses."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Frames from data.prepare (record format 1).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Prepare videos with `python -m data.prepare --input VIDEOS --output PREPARED` and pass '
    'PREPARED as the manual_dir (tfds.download.DownloadConfig(manual_dir=PREPARED)).'
  )

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # tfds' own lookup imports `importlib_resources`, which it only declares for Python < 3.9.
    from etils import epath

    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'landmarks': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
          'mask_polygon': tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
          'pose_rotation': tfds.features.Tensor(shape=(3, 3), dtype=np.float32),
          'pose_translation': tfds.features.Tensor(shape=(3,), dtype=np.float32),
          'pose_scale': tfds.features.Scalar(dtype=np.float32),
          'identity': tfds.features.Text(),
          'clip': tfds.features.Text(),
          'frame_index': tfds.features.Scalar(dtype=np.int64),
        }
      ),
      # Keep the prepared order (clips contiguous, frames in time order), like the source shards.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    prepared = pathlib.Path(dl_manager.manual_dir)
    index = records.read_json(prepared, records.CLIP_INDEX)
    return {
      split: self._generate_examples(prepared, split)
      for split, info in index['splits'].items()
      if info['num_records']
    }

  def _generate_examples(self, prepared: pathlib.Path, split: str):
    source, _ = records.open_split(prepared, split)
    for number in range(len(source)):
      raw = source[number]
      # Check the record fully, then pass its encoded image through without re-encoding.
      decoded = records.decode_record(raw, shard_name_for_errors=f'{split} record {number}')
      image_bytes = msgpack.unpackb(raw, raw=False)['image']
      yield (
        number,
        {
          'image': image_bytes,
          'landmarks': decoded['landmarks'],
          'mask_polygon': decoded['mask_polygon'],
          'pose_rotation': decoded['pose']['rotation'],
          'pose_translation': decoded['pose']['translation'],
          'pose_scale': decoded['pose']['scale'],
          'identity': decoded['identity'],
          'clip': decoded['clip'],
          'frame_index': decoded['frame_index'],
        },
      )


def data_source(prepared_dir, tfds_data_dir, split: str = 'train'):
  """`tfds.data_source` over a prepared folder, building the tfds copy on first use."""
  return tfds.data_source(
    'reenact_frames',
    split=split,
    data_dir=str(tfds_data_dir),
    download_and_prepare_kwargs={
      'file_format': 'array_record',
      'download_config': tfds.download.DownloadConfig(manual_dir=str(prepared_dir)),
    },
  )
