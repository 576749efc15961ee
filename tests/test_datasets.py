"""The community's dataset layouts and splits, a killed preparation resumed, the same preparation
on Apache Beam (its local runner)."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import apache_beam as beam
import cv2
import numpy as np
import pytest

from reenact_jax import bundled, dataset_layouts, media, preparation, preparation_beam, records
from tests.helpers import run_command, write_video

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _touch(path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'')


def _identities_and_splits(clips) -> dict[str, tuple[str, str | None]]:
  return {clip.name: (clip.identity, clip.split) for clip in clips}


def test_fomm_layout_png_and_mp4(tmp_path):
  # FOMM's preprocessed VoxCeleb: frame folders named like videos (vox-png) or videos (vox-mp4).
  names = {
    'train': ['id10001#7w0IBEWc9Qw#000993#001143', 'id10002#xTV-jFAUKcw#000024#000161'],
    'test': ['id10280#NXjT3732Ekg#001093#001192'],
  }
  for split, clips in names.items():
    for name in clips:
      _touch(tmp_path / 'vox-png' / split / f'{name}.mp4' / '0000000.png')
      _touch(tmp_path / 'vox-mp4' / split / f'{name}.mp4')
  for folder in ('vox-png', 'vox-mp4'):
    clips, skipped, layout = dataset_layouts.discover(tmp_path / folder)
    assert layout == 'fomm' and not skipped
    assert _identities_and_splits(clips) == {
      'train/id10001#7w0IBEWc9Qw#000993#001143': ('id10001', 'train'),
      'train/id10002#xTV-jFAUKcw#000024#000161': ('id10002', 'train'),
      'test/id10280#NXjT3732Ekg#001093#001192': ('id10280', 'test'),
    }
    assert all(clip.is_frame_folder == (folder == 'vox-png') for clip in clips)
  # Pointing at one split's folder keeps that split.
  clips, _, layout = dataset_layouts.discover(tmp_path / 'vox-mp4' / 'test')
  assert layout == 'fomm' and [c.split for c in clips] == ['test']


def test_voxceleb_layout_from_any_folder_above_the_identities(tmp_path):
  for path in (
    'vox2/dev/mp4/id00012/21Uxsk56VDQ/00001.mp4',
    'vox2/dev/mp4/id00012/21Uxsk56VDQ/00002.mp4',
    'vox2/dev/mp4/id00015/0fijmz4vTVU/00001.mp4',
    'vox2/test/mp4/id00017/01dfn2spqyE/00001.mp4',
  ):
    _touch(tmp_path / path)
  clips, skipped, layout = dataset_layouts.discover(tmp_path / 'vox2')
  assert layout == 'voxceleb' and not skipped
  found = _identities_and_splits(clips)
  assert found['dev/mp4/id00012/21Uxsk56VDQ/00002'] == ('id00012', 'train')
  assert found['test/mp4/id00017/01dfn2spqyE/00001'] == ('id00017', 'test')
  # At the identities themselves: the same identities, no split of the dataset's own.
  clips, _, layout = dataset_layouts.discover(tmp_path / 'vox2' / 'dev' / 'mp4')
  assert layout == 'voxceleb'
  assert {c.identity for c in clips} == {'id00012', 'id00015'}
  assert {c.split for c in clips} == {None}


def test_flat_and_folders_layouts_and_a_layout_that_does_not_fit(tmp_path):
  for name in ('WRA_AdamSchiff_000.mp4', 'WRA_AdamSchiff_001.mp4', 'RD_Radio1_000.mp4'):
    _touch(tmp_path / 'hdtf' / name)
  clips, _, layout = dataset_layouts.discover(tmp_path / 'hdtf')
  assert layout == 'flat'
  assert {c.identity for c in clips} == {
    'WRA_AdamSchiff_000',
    'WRA_AdamSchiff_001',
    'RD_Radio1_000',
  }

  _touch(tmp_path / 'mine' / 'alice' / 'talk.mp4')
  _touch(tmp_path / 'mine' / 'bob' / 'sing' / '0001.png')
  clips, _, layout = dataset_layouts.discover(tmp_path / 'mine')
  assert layout == 'folders'
  assert _identities_and_splits(clips) == {'alice/talk': ('alice', None), 'bob/sing': ('bob', None)}

  # Forced FOMM on a tree that is not FOMM: each input skipped with the reason, none guessed.
  clips, skipped, layout = dataset_layouts.discover(tmp_path / 'mine', 'fomm')
  assert layout == 'fomm' and not clips
  assert {s.kind for s in skipped} == {'layout'} and len(skipped) == 2
  assert 'identity#video#first#last' in skipped[0].reason
  with pytest.raises(ValueError, match='Unknown layout'):
    dataset_layouts.discover(tmp_path / 'mine', 'vox')


@pytest.fixture(scope='module')
def carphone_frames() -> list[np.ndarray]:
  return list(media.read_frames(bundled.carphone_path(), max_frames=24))


def _frame_folder(folder: pathlib.Path, frames) -> None:
  folder.mkdir(parents=True)
  for number, frame in enumerate(frames):
    cv2.imwrite(str(folder / f'{number:07d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def test_fomm_tree_is_prepared_with_its_identities_and_split(tmp_path, carphone_frames):
  root = tmp_path / 'vox-png'
  clips = {
    'train': [
      'id10001#aaa#000001#000005',
      'id10001#bbb#000010#000014',
      'id10002#ccc#000001#000005',
    ],
    'test': ['id10280#ddd#000001#000005'],
  }
  offset = 0
  for split, names in clips.items():
    for name in names:
      _frame_folder(root / split / f'{name}.mp4', carphone_frames[offset : offset + 4])
      offset += 4
  manifest = preparation.prepare(root, tmp_path / 'out', resolution=16)
  assert manifest['layout'] == 'fomm' and manifest['split_source'] == 'input'
  assert manifest['num_clips'] == 4 and manifest['num_identities'] == 3
  assert manifest['splits']['train']['identities'] == 2
  assert manifest['splits']['test']['identities'] == 1
  assert manifest['identities_in_both_splits'] == 0
  for split in records.SPLITS:
    _, index = records.open_split(tmp_path / 'out', split)
    assert {entry['identity'] for entry in index} == {n.split('#')[0] for n in clips[split]}
  # --split=by_identity ignores the folders and holds out identities by their hash.
  again = preparation.prepare(root, tmp_path / 'out2', resolution=16, split='by_identity')
  assert again['split_source'] == 'identity' and again['splits']['test']['identities'] == 1
  # One split's folder alone: identities are held out, so that there is a test split.
  train_only = preparation.prepare(root / 'train', tmp_path / 'out3', resolution=16)
  assert train_only['layout'] == 'fomm' and train_only['split_source'] == 'identity'
  assert train_only['splits']['test']['identities'] == 1
  assert train_only['splits']['train']['identities'] == 1


@pytest.fixture(scope='module')
def flat_videos(tmp_path_factory, carphone_frames) -> pathlib.Path:
  """Five talking-head videos of five frames each, and one without a face (flat layout)."""
  folder = tmp_path_factory.mktemp('flat')
  for number in range(5):
    frames = carphone_frames[4 * number : 4 * number + 5]
    write_video(folder / f'speaker_{number}.mp4', frames)
  write_video(folder / 'blank.mp4', [np.full((96, 96, 3), 90, np.uint8)] * 4)
  return folder


PREPARE_ARGS = ('--resolution=16', '--records_per_shard=7', '--test_fraction=0.4')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, flat_videos) -> pathlib.Path:
  output = tmp_path_factory.mktemp('uninterrupted') / 'out'
  done = run_command('data.prepare', f'--input={flat_videos}', f'--output={output}', *PREPARE_ARGS)
  assert done.returncode == 0, done.stderr
  return output


def _contents(output: pathlib.Path) -> dict:
  """Everything a preparation wrote, its timing left out."""
  manifest = json.loads((output / records.MANIFEST).read_text())
  for key in ('seconds', 'frames_per_sec'):
    manifest.pop(key)
  contents = {'manifest': manifest, 'files': sorted(p.name for p in output.iterdir())}
  for name in (records.CLIP_INDEX, *preparation.TFDS_FILES):
    contents[name] = json.loads((output / name).read_text())
  for split in records.SPLITS:
    source, _ = records.open_split(output, split)
    contents[split] = [source[number] for number in range(len(source))]
  return contents


def test_uninterrupted_reference(uninterrupted):
  contents = _contents(uninterrupted)
  manifest = contents['manifest']
  assert manifest['layout'] == 'flat' and manifest['num_clips'] == 5
  assert manifest['skipped_counts'] == {'no_face': 1}
  # Shards of 7 records cut across clips; every record read back in clip order.
  assert len(manifest['splits']['train']['shards']) >= 2
  assert sum(len(contents[split]) for split in records.SPLITS) == manifest['num_frames'] == 25
  assert not (uninterrupted / preparation.PROGRESS).exists()


def test_a_killed_preparation_resumes_to_the_same_dataset(tmp_path, flat_videos, uninterrupted):
  output = tmp_path / 'out'
  command = [
    sys.executable, '-m', 'data.prepare', f'--input={flat_videos}', f'--output={output}',
    *PREPARE_ARGS,
  ]  # fmt: skip
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  progress = output / preparation.PROGRESS
  deadline = time.monotonic() + 300
  while not list(progress.glob('*.json'))[1:]:  # settings.json and one clip's done-record
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (output / records.MANIFEST).exists()  # Killed before the end.
  finished_before = len(list(progress.glob('*.json'))) - 1
  assert 1 <= finished_before < 6

  # Other settings on the unfinished folder: one clear line, nothing lost.
  done = run_command('data.prepare', f'--input={flat_videos}', f'--output={output}',
                     *PREPARE_ARGS, '--resolution=32')  # fmt: skip
  assert done.returncode == 2 and 'Traceback' not in done.stderr
  assert 'other settings (resolution)' in done.stderr
  assert len(list(progress.glob('*.json'))) - 1 == finished_before

  done = run_command('data.prepare', f'--input={flat_videos}', f'--output={output}', *PREPARE_ARGS)
  assert done.returncode == 0, done.stderr
  assert f'Resuming: {finished_before} of 6 clips' in done.stderr
  assert _contents(output) == _contents(uninterrupted)


def test_beam_direct_runner_writes_the_same_dataset(tmp_path, flat_videos, uninterrupted):
  output = tmp_path / 'beam'
  options = beam.options.pipeline_options.PipelineOptions(
    ['--runner=FnApiRunner', '--direct_num_workers=1']
  )
  with beam.Pipeline(options=options) as pipeline:
    preparation_beam.build(
      pipeline, flat_videos, output, resolution=16, records_per_shard=7, test_fraction=0.4
    )
  assert _contents(output) == _contents(uninterrupted)


@pytest.mark.slow  # 16 s; the pipeline itself is checked in process above.
def test_beam_command_with_pipeline_options(tmp_path, flat_videos, uninterrupted):
  output = tmp_path / 'beam'
  done = run_command(
    'data.prepare_beam', f'--input={flat_videos}', f'--output={output}', *PREPARE_ARGS,
    '--', '--direct_num_workers=2',
    '--direct_running_mode=multi_processing',
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Prepared 5 clips' in done.stdout
  assert 'prism' not in done.stderr.lower()  # Beam's DirectRunner would try to download it.
  assert _contents(output) == _contents(uninterrupted)


def test_workers_do_not_change_the_dataset(tmp_path, flat_videos, uninterrupted):
  manifest = preparation.prepare(
    flat_videos, tmp_path / 'out', resolution=16, records_per_shard=7, test_fraction=0.4, workers=2
  )
  assert manifest['num_clips'] == 5
  assert _contents(tmp_path / 'out') == _contents(uninterrupted)
