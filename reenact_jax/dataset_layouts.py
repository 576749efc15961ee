"""Which clips a dataset folder holds, whose they are and which split the dataset puts them in.

The layouts the community's face-video datasets come in:

  fomm      FOMM's preprocessed VoxCeleb (`vox-png/train/id10001#7w0IBEWc9Qw#000993#001143.mp4/`
            frame folders, or `vox-mp4/test/<same name>.mp4` files): a clip is named
            `identity#video#first#last`; the identity is the part before the first '#', the
            split is the `train/` or `test/` folder above it.
  voxceleb  VoxCeleb1/2 as distributed (`[dev|test/][mp4/]id10001/1zcIwhmdeo4/00001.mp4`):
            identity/video/utterance, the identity a folder named `id` + digits, wherever the
            input points above it; a `dev/` (train) or `test/` folder above the identities is
            the split.
  flat      A folder of videos (or frame folders), one identity each (HDTF, TalkingHead-1KH).
  folders   `<identity>/<clip>.mp4`, `<identity>/<clip>/<frames>` or deeper: the identity is the
            first folder below the input.

`auto` takes the first of fomm, voxceleb, flat that every clip fits, else folders. With a
layout given explicitly, an input that does not fit it is skipped with the reason.
"""

import dataclasses
import os
import pathlib
import re

from etils import epath

from reenact_jax import media

LAYOUTS = ('auto', 'fomm', 'voxceleb', 'flat', 'folders')
_FOMM_NAME = re.compile(r'^(?P<identity>[^#]+)#[^#]+#\d+#\d+$')
_VOXCELEB_IDENTITY = re.compile(r'^id\d+$')
# Folder names that carry a dataset's own split (VoxCeleb calls its training split 'dev').
_SPLIT_FOLDERS = {'train': 'train', 'dev': 'train', 'test': 'test'}
_EXPECTED = {
  'fomm': 'a clip named identity#video#first#last (FOMM), in a train/ or test/ folder',
  'voxceleb': 'identity/video/utterance with the identity folder named id<digits> (VoxCeleb)',
  'flat': 'a video or frame folder directly in the input folder',
}


@dataclasses.dataclass(frozen=True)
class ClipInput:
  """One clip to prepare: a video file or a folder of frames."""

  identity: str
  name: str  # Unique within the dataset: the path below the input folder, without extension.
  path: str
  is_frame_folder: bool
  split: str | None = None  # The dataset's own split ('train' or 'test'), when it has one.


@dataclasses.dataclass(frozen=True)
class Skipped:
  """An input that produced no clip, and why ('kind' is a short category for the summary)."""

  path: str
  kind: str  # 'unsupported', 'layout', 'unreadable', 'no_face', 'too_short', 'error'
  reason: str


@dataclasses.dataclass(frozen=True)
class _Item:
  path: str
  parts: tuple[str, ...]  # Below the input folder; the last without its video extension.
  is_frame_folder: bool
  root_name: str


def _stem(name: str) -> str:
  suffix = pathlib.PurePath(name).suffix
  return name[: -len(suffix)] if suffix.lower() in media.VIDEO_EXTENSIONS else name


def _split_above(item: _Item, depth: int) -> str | None:
  """The split named by the nearest folder above parts[:depth] (the input folder included)."""
  for name in reversed((item.root_name, *item.parts[:depth])):
    if name.lower() in _SPLIT_FOLDERS:
      return _SPLIT_FOLDERS[name.lower()]
  return None


def _fomm(item: _Item) -> tuple[str, str | None] | None:
  match = _FOMM_NAME.match(item.parts[-1])
  split = _split_above(item, len(item.parts) - 1)
  if not match or split is None:
    return None
  return match['identity'], split


def _voxceleb(item: _Item) -> tuple[str, str | None] | None:
  if len(item.parts) < 3 or not _VOXCELEB_IDENTITY.match(item.parts[-3]):
    return None
  return item.parts[-3], _split_above(item, len(item.parts) - 3)


def _flat(item: _Item) -> tuple[str, str | None] | None:
  return (item.parts[0], None) if len(item.parts) == 1 else None


def _folders(item: _Item) -> tuple[str, str | None]:
  return item.parts[0], None


_ASSIGN = {'fomm': _fomm, 'voxceleb': _voxceleb, 'flat': _flat, 'folders': _folders}


def _items(root: epath.Path) -> tuple[list[_Item], list[Skipped]]:
  if root.is_file():
    if not media.is_video(root):
      return [], [Skipped(str(root), 'unsupported', f'unsupported extension {root.suffix!r}')]
    return [_Item(str(root), (root.stem,), False, root.parent.name)], []
  items, skipped = [], []
  for folder, _, files in sorted(root.walk(), key=lambda entry: entry[0].parts):
    relative = folder.relative_to(root).parts
    if any(part.startswith('.') for part in relative):
      continue
    if any(pathlib.PurePath(f).suffix.lower() in media.IMAGE_EXTENSIONS for f in files):
      # A folder of frames is one clip (the input folder itself: a clip of the folder's name).
      parts = (*relative[:-1], _stem(relative[-1])) if relative else (root.name,)
      items.append(_Item(str(folder), parts, True, root.name if relative else root.parent.name))
    for name in sorted(files, key=media.natural_key):
      suffix = pathlib.PurePath(name).suffix.lower()
      if name.startswith('.') or suffix in media.IMAGE_EXTENSIONS:
        continue
      path = folder / name
      if suffix in media.VIDEO_EXTENSIONS:
        items.append(_Item(str(path), (*relative, pathlib.PurePath(name).stem), False, root.name))
      else:
        skipped.append(Skipped(str(path), 'unsupported', f'unsupported extension {suffix!r}'))
  return items, skipped


def discover(
  input_path: str | os.PathLike, layout: str = 'auto'
) -> tuple[list[ClipInput], list[Skipped], str]:
  """(clips in a stable order, inputs that are not clips, the layout used) below `input_path`.

  `input_path` is a video file or a folder (local, or gs:// with the 'gcs' extra); `layout` one
  of LAYOUTS.

  Raises:
    FileNotFoundError: the input does not exist.
    ValueError: an unknown layout.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'Unknown layout {layout!r}: use one of {", ".join(LAYOUTS)}.')
  root = epath.Path(input_path)
  if not root.exists():
    raise FileNotFoundError(f'{root} does not exist.')
  items, skipped = _items(root)
  if layout == 'auto':
    layout = next(
      (name for name in ('fomm', 'voxceleb', 'flat') if items and all(map(_ASSIGN[name], items))),
      'folders',
    )
  clips = []
  for item in items:
    assigned = _ASSIGN[layout](item)
    if assigned is None:
      skipped.append(
        Skipped(str(item.path), 'layout', f'not in the {layout} layout: {_EXPECTED[layout]}')
      )
      continue
    identity, split = assigned
    name = '/'.join(item.parts)
    clips.append(ClipInput(identity, name, item.path, item.is_frame_folder, split))
  return clips, skipped, layout
