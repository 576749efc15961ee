"""Data preparation on real inputs: the carphone clip, a corrupt file, a faceless video."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from reenact_jax import bundled, crops, face_topology, media, preparation, records
from tests.helpers import run_command, write_video

RESOLUTION = 64


def _gradient_frames(count: int, size: int = 96) -> list[np.ndarray]:
  y, x = np.mgrid[0:size, 0:size]
  return [
    np.stack([(2 * x + 5 * t) % 256, 2 * y % 256, np.full_like(x, 128)], -1).astype(np.uint8)
    for t in range(count)
  ]


def _polygon_area(points: np.ndarray) -> float:
  x, y = points[:, 0], points[:, 1]
  return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.fixture(scope='module')
def carphone_dir(tmp_path_factory) -> pathlib.Path:
  return bundled.prepared_demo_dir(tmp_path_factory.mktemp('cache'), resolution=RESOLUTION)


def _all_records(data_dir):
  out = {}
  for split in records.SPLITS:
    source, clips = records.open_split(data_dir, split)
    out[split] = ([records.decode_record(source[i]) for i in range(len(source))], clips)
  return out


def test_carphone_landmarks_masks_poses_and_counts(carphone_dir):
  manifest = json.loads((carphone_dir / records.MANIFEST).read_text())
  assert manifest['num_input_frames'] == 120
  assert manifest['num_frames'] >= 110  # landmarks found on at least 110 of the 120 frames
  assert manifest['num_landmarks'] == 478 and manifest['num_skipped'] == 0
  assert manifest['num_clips'] == 1 and manifest['num_identities'] == 1

  split_records = _all_records(carphone_dir)
  total = 0
  for split, (frames, clips) in split_records.items():
    assert len(frames) == manifest['splits'][split]['frames']
    assert sum(clip['num_frames'] for clip in clips) == len(frames)
    assert len(clips) == manifest['splits'][split]['clips'] == 1
    total += len(frames)
  assert total == manifest['num_frames']

  # One identity: the test split is the clip's last frames.
  train, test = split_records['train'][0], split_records['test'][0]
  assert 2 <= len(test) <= 0.2 * total
  assert max(f['frame_index'] for f in train) < min(f['frame_index'] for f in test)
  frame_indices = [f['frame_index'] for f in train + test]
  assert frame_indices == sorted(frame_indices)

  canonical = face_topology.canonical_landmarks()
  stable = face_topology.STABLE
  for frame in train + test:
    assert frame['image'].shape == (RESOLUTION, RESOLUTION, 3)
    assert frame['image'].dtype == np.uint8
    landmarks = frame['landmarks']
    assert landmarks.shape == (478, 3) and landmarks.dtype == np.float32
    assert np.abs(landmarks[:, :2]).max() <= 1.0  # inside the crop
    assert abs(landmarks[:, 2].mean()) < 2e-3
    # Upright face, subject's right eye on the image left, irises between the eye corners.
    assert landmarks[10, 1] < landmarks[1, 1] < landmarks[152, 1]
    assert landmarks[33, 0] < landmarks[468, 0] < landmarks[133, 0]
    assert landmarks[362, 0] < landmarks[473, 0] < landmarks[263, 0]
    # Mask: the face-oval polygon, a plausible share of the crop, filled where the polygon is.
    polygon = frame['mask_polygon']
    np.testing.assert_allclose(polygon, landmarks[face_topology.FACE_OVAL, :2], atol=1e-3)
    mask = crops.mask_from_polygon(polygon, RESOLUTION, RESOLUTION)
    area = float(mask.mean())
    assert 0.08 < area < 0.6
    assert abs(area - _polygon_area(polygon) / 4) < 0.03
    nose = ((landmarks[1, :2] + 1) * RESOLUTION / 2).astype(int)
    assert mask[nose[1], nose[0], 0] == 1.0
    # Person matte: the face is person, and so is more than the face (hair, neck, shoulders);
    # the crop's top corners (the car's interior) are not.
    matte = frame['matte']
    assert matte.shape == (RESOLUTION, RESOLUTION) and matte.dtype == np.uint8
    assert matte[nose[1], nose[0]] > 200
    assert (matte > 127).mean() > area + 0.1
    assert matte[:4, :4].mean() < 64 and matte[:4, -4:].mean() < 64
    # Pose: a proper rotation that maps the canonical face onto the frame's stable points.
    pose = frame['pose']
    rotation = pose['rotation']
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)
    assert np.linalg.det(rotation) > 0.99
    fitted = pose['scale'] * canonical[stable] @ rotation.T + pose['translation']
    assert np.abs(fitted - landmarks[stable]).mean() < 0.03


def test_demo_dir_is_cached(carphone_dir):
  stamp = (carphone_dir / records.MANIFEST).stat().st_mtime_ns
  again = bundled.prepared_demo_dir(carphone_dir.parent, resolution=RESOLUTION)
  assert again == carphone_dir
  assert (again / records.MANIFEST).stat().st_mtime_ns == stamp


def test_record_frames_for_the_input_pipeline(carphone_dir):
  frames = records.RecordFrames(carphone_dir, 'train', image_size=32)
  assert len(frames.clips) == 1 and frames.clips[0].first == 0
  frame = frames.frame(3)
  assert frame['image'].shape == (32, 32, 3) and frame['image'].dtype == np.float32
  assert 0.0 <= frame['image'].min() and frame['image'].max() <= 1.0
  assert frame['mask'].shape == (32, 32, 1)
  assert frame['matte'].shape == (32, 32, 1) and 0.0 <= frame['matte'].min() <= 1.0
  assert frame['landmarks'].shape == (478, 3)


def test_shards_of_an_older_format_ask_for_a_new_preparation(carphone_dir, tmp_path):
  old = tmp_path / 'old'
  shutil.copytree(carphone_dir, old)
  index = json.loads((old / records.CLIP_INDEX).read_text())
  index['format_version'] = 1
  (old / records.CLIP_INDEX).write_text(json.dumps(index))
  with pytest.raises(records.OldFormatError, match='Prepare the data again'):
    records.RecordFrames(old, 'train', image_size=32)


def test_folder_with_good_corrupt_and_faceless_clips(tmp_path):
  videos = tmp_path / 'videos'
  for identity in ('alice', 'bob', 'carol'):
    (videos / identity).mkdir(parents=True)
  carphone = bundled.carphone_path()
  shutil.copy(carphone, videos / 'alice' / 'talk.mp4')
  # Corrupt: the first half of a real video (its index lives at the end of the file).
  data = carphone.read_bytes()
  (videos / 'bob' / 'broken.mp4').write_bytes(data[: len(data) // 2])
  write_video(videos / 'carol' / 'gradient.mp4', _gradient_frames(12))
  output = tmp_path / 'shards'

  done = run_command(
    'data.prepare',
    f'--input={videos}',
    f'--output={output}',
    '--resolution=32',
    '--max-frames=40',
  )
  assert done.returncode == 0, done.stderr
  manifest = json.loads((output / records.MANIFEST).read_text())
  assert manifest['num_clips'] == 1 and manifest['clips'][0]['identity'] == 'alice'
  assert manifest['num_skipped'] == 2
  reasons = {pathlib.Path(item['path']).name: item for item in manifest['skipped']}
  assert reasons['broken.mp4']['kind'] == 'unreadable'
  assert reasons['gradient.mp4']['kind'] == 'no_face'
  assert 'no face' in reasons['gradient.mp4']['reason']
  assert manifest['skipped_counts'] == {'unreadable': 1, 'no_face': 1}
  printed = done.stdout
  assert 'Skipped 2 inputs' in printed and 'broken.mp4' in printed
  # The only kept identity is alone in its split, and the counts match the shards.
  train, _ = records.open_split(output, 'train')
  test, _ = records.open_split(output, 'test')
  assert len(train) + len(test) == manifest['num_frames'] >= 36

  # An output folder that holds shards is not overwritten without --overwrite.
  shards = sorted(p.name for p in output.iterdir())
  done = run_command('data.prepare', f'--input={videos}', f'--output={output}', '--resolution=16')
  assert done.returncode == 2
  assert '--overwrite' in done.stderr and 'Traceback' not in done.stderr
  assert sorted(p.name for p in output.iterdir()) == shards
  assert json.loads((output / records.MANIFEST).read_text())['resolution'] == 32


def test_other_bad_inputs_are_skipped_with_reasons(tmp_path):
  videos = tmp_path / 'videos'
  (videos / 'dave').mkdir(parents=True)
  (videos / 'erin').mkdir()
  (videos / 'frank').mkdir()
  write_video(videos / 'dave' / 'one_frame.mp4', _gradient_frames(1))
  (videos / 'erin' / 'notes.txt').write_text('not a video')
  # Truncated in the middle of the frame data (index at the front, so the file still opens).
  write_video(videos / 'frank' / 'whole.mp4', _gradient_frames(20), faststart=True)
  whole = (videos / 'frank' / 'whole.mp4').read_bytes()
  (videos / 'frank' / 'cut.mp4').write_bytes(whole[: len(whole) // 2])
  (videos / 'frank' / 'whole.mp4').unlink()
  manifest = preparation.prepare(videos, tmp_path / 'out', resolution=16)
  kinds = {pathlib.Path(item['path']).name: item['kind'] for item in manifest['skipped']}
  assert kinds == {
    'one_frame.mp4': 'too_short',
    'notes.txt': 'unsupported',
    'cut.mp4': 'unreadable',
  }
  assert manifest['num_clips'] == 0 and manifest['num_frames'] == 0
  assert not preparation.prepare(videos, tmp_path / 'o2', resolution=16)['num_clips']


def test_splits_are_identity_disjoint(tmp_path):
  import cv2

  # Three identities as frame folders cut from the real clip.
  frames = list(media.read_frames(bundled.carphone_path(), max_frames=12))
  videos = tmp_path / 'frames'
  for identity in ('id0', 'id1', 'id2'):
    folder = videos / identity / 'clip'
    folder.mkdir(parents=True)
    for number, frame in enumerate(frames[:4]):
      cv2.imwrite(str(folder / f'{number}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  # A faceless identity is skipped; the held-out identities are chosen among the kept ones.
  faceless = videos / 'id3' / 'clip'
  faceless.mkdir(parents=True)
  for number, frame in enumerate(_gradient_frames(3)):
    cv2.imwrite(str(faceless / f'{number}.png'), frame)
  manifest = preparation.prepare(videos, tmp_path / 'out', resolution=16, test_fraction=0.3)
  assert manifest['num_clips'] == 3 and manifest['split_source'] == 'identity'
  assert manifest['skipped_counts'] == {'no_face': 1}
  identities = {}
  for split in records.SPLITS:
    _, split_clips = records.open_split(tmp_path / 'out', split)
    identities[split] = {clip['identity'] for clip in split_clips}
    assert manifest['splits'][split]['identities'] == len(identities[split])
  assert identities['train'] and identities['test']
  assert not identities['train'] & identities['test']
  assert identities['train'] | identities['test'] == {'id0', 'id1', 'id2'}


def test_decode_errors_name_the_shard():
  with pytest.raises(records.RecordDecodeError, match='train.array_record-00002-of-00004 record 7'):
    records.decode_record(
      b'\x93garbage', shard_name_for_errors='train.array_record-00002-of-00004 record 7'
    )


def test_mask_from_polygon_fills_pixel_centres():
  # The square [-0.45, 0.45]^2 of an 8x8 image spans continuous pixels 2.2..5.8: centres 2..5.
  square = np.array([[-0.45, -0.45], [0.45, -0.45], [0.45, 0.45], [-0.45, 0.45]], np.float32)
  mask = crops.mask_from_polygon(square, 8, 8)
  assert mask.shape == (8, 8, 1) and mask.dtype == np.float32
  assert mask.sum() == 16 and mask[2:6, 2:6].all()
  # A triangle: the filled share matches its area up to the outline.
  triangle = np.array([[-0.8, 0.8], [0.8, 0.8], [0.0, -0.8]], np.float32)
  area = crops.mask_from_polygon(triangle, 64, 64).mean()
  assert abs(area - _polygon_area(triangle) / 4) < 0.03


def test_crop_and_normalisation_round_trip():
  # A landmark at a pixel centre of the crop lands on that centre in normalised units.
  box = (10, 20, 40)
  points = np.array([[[10.5, 20.5, 4.0], [49.5, 59.5, -4.0]]])
  normalised = crops.normalise_landmarks(points, box)
  np.testing.assert_allclose(
    normalised[0, :, :2], [[-1 + 1 / 40, -1 + 1 / 40], [1 - 1 / 40, 1 - 1 / 40]]
  )
  np.testing.assert_allclose(normalised[0, :, 2], [0.2, -0.2])
  frame = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
  assert crops.crop_frame(frame, (-10, -10, 40), 20).shape == (20, 20, 3)


def test_the_prepared_folder_reads_with_tfds_and_grain(carphone_dir):
  import grain
  import tensorflow_datasets as tfds

  for split in records.SPLITS:
    expected, _ = records.open_split(carphone_dir, split)
    # tensorflow-datasets, in place: the folder's dataset_info.json and features.json.
    frames = tfds.builder_from_directory(str(carphone_dir)).as_data_source(split)
    assert len(frames) == len(expected) > 0
    # grain directly on the shards.
    dataset = grain.MapDataset.source(
      grain.sources.ArrayRecordDataSource(
        [str(p) for p in records.split_shards(carphone_dir, split)]
      )
    ).map(records.decode_record)
    assert len(dataset) == len(expected)
    for number in (0, len(expected) - 1):
      want = records.decode_record(expected[number])
      for frame in (frames[number], dataset[number]):
        np.testing.assert_array_equal(frame['image'], want['image'])
        np.testing.assert_array_equal(frame['matte'], want['matte'])
        np.testing.assert_array_equal(frame['landmarks'], want['landmarks'])
        assert frame['frame_index'] == want['frame_index'] and frame['clip'] == want['clip']
  first, last = frames[0], frames[len(frames) - 1]
  assert first['frame_index'] < last['frame_index']  # records in clip order, not the same one


def test_corrupt_record_raises_with_its_shard_or_is_skipped_when_asked(carphone_dir, tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter

  copy = tmp_path / 'copy'
  shutil.copytree(carphone_dir, copy)
  source, _ = records.open_split(copy, 'train')
  raw = [source[i] for i in range(len(source))]
  shard = records.split_shards(copy, 'train')[0]
  writer = ArrayRecordWriter(str(shard), 'group_size:1')
  for number, record in enumerate(raw):
    writer.write(record[: len(record) // 2] if number == 1 else record)
  writer.close()

  strict = records.RecordFrames(copy, 'train', image_size=16)
  assert strict.frame(0)['image'].shape == (16, 16, 3)
  with pytest.raises(records.RecordDecodeError, match=f'{shard.name} record 1 '):
    strict.frame(1)
  lenient = records.RecordFrames(copy, 'train', image_size=16, skip_corrupt=True)
  frame = lenient.frame(1)
  assert frame['image'].shape == (16, 16, 3) and lenient.corrupt_records == 1


def test_the_prepare_benchmark_times_each_stage_of_the_demo_clip():
  """benchmark --what=input's stage split: every stage timed per frame, the detectors run on the
  clip's first frame and the rest is tracked, and the stages add up to the reported rate."""
  from reenact_jax import benchmarks

  result = benchmarks.measure_prepare_stages(resolution=64)
  stages = ('decode', 'landmarks', 'crop', 'matte', 'encode')
  for stage in stages:
    assert result[f'prepare_{stage}_ms'] > 0.0, stage
  assert result['prepare_detected_frames'] >= 1
  assert result['prepare_tracked_faces_per_sec'] > 0.0
  total_ms = sum(result[f'prepare_{stage}_ms'] for stage in stages)
  assert result['prepare_stages_frames_per_sec'] == pytest.approx(1000.0 / total_ms, rel=1e-6)
  assert result['prepare_landmark_faces_per_sec'] == pytest.approx(
    1000.0 / result['prepare_landmarks_ms'], rel=1e-6
  )
