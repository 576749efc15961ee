"""Run directories on a local disk, a shared filesystem or an object store (gs://, s3://).

Checkpoints go to WORKDIR directly (orbax writes object stores natively). Logs cannot: an object
store has no append, and a TensorBoard event file or metrics.jsonl grows line by line. So process
0 writes its logs into a local directory and, for an object-store workdir, copies every changed
file whole to WORKDIR at each checkpoint and when the run ends (`LogDir.sync`).
"""

import os
import pathlib
import shutil
import tempfile

from absl import logging
from etils import epath

# Logs a resumed run continues (the rest, like TensorBoard event files, start new files).
_CONTINUED = ('metrics.jsonl', 'train.*.log')


def is_remote(path: str | os.PathLike) -> bool:
  """gs://bucket/run and other URLs; a local or shared-filesystem path is not remote."""
  return '://' in os.fspath(path)


class LogDir:
  """Where this process writes its logs (`local`), and the run directory they belong in.

  With a filesystem workdir and no `local_dir`, `local` is the workdir itself and `sync` does
  nothing. Otherwise (`local_dir` given, or an object-store workdir) `local` is `local_dir` (or
  a fresh temporary directory), seeded with the workdir's existing metrics.jsonl and text logs
  so a resumed run appends to them, and `sync` uploads what changed since the last sync.
  """

  def __init__(self, workdir: str | os.PathLike, local_dir: str = ''):
    self.workdir = epath.Path(workdir)
    self.mirrored = bool(local_dir) or is_remote(workdir)
    if not self.mirrored:
      self.local = pathlib.Path(workdir)
      self.local.mkdir(parents=True, exist_ok=True)
      return
    self.local = pathlib.Path(local_dir or tempfile.mkdtemp(prefix='reenact_jax_logs_'))
    self.local.mkdir(parents=True, exist_ok=True)
    self._synced: dict[pathlib.Path, tuple[int, int]] = {}
    if self.workdir.exists():
      for pattern in _CONTINUED:
        for remote in self.workdir.glob(pattern):
          local = self.local / remote.name
          if not local.exists():
            local.write_bytes(remote.read_bytes())
            self._synced[local] = self._signature(local)  # Already in the workdir.
    logging.info(
      'Logs are written to %s and copied to %s at every checkpoint.', self.local, workdir
    )

  @staticmethod
  def _signature(path: pathlib.Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns

  def sync(self) -> None:
    """Copy new or changed log files to the workdir (whole files; object stores cannot append)."""
    if not self.mirrored:
      return
    for path in sorted(self.local.rglob('*')):
      if not path.is_file():
        continue
      signature = self._signature(path)
      if self._synced.get(path) == signature:
        continue
      target = self.workdir / path.relative_to(self.local).as_posix()
      target.parent.mkdir(parents=True, exist_ok=True)
      if is_remote(self.workdir):
        target.write_bytes(path.read_bytes())
      else:
        shutil.copyfile(path, target)
      self._synced[path] = signature
