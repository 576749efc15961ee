"""Small helpers shared by the tests."""

import fractions

import av
import numpy as np

from configs import tiny


def config_with(base=tiny, **overrides):
  """base.get_config() with dotted-key overrides: config_with(**{'train.total_steps': 3})."""
  config = base.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def run_command(module: str, *args: str, timeout: float = 600, env=None):
  """`python -m module args...` from the repository root, as a user runs it: the completed
  process (stdout and stderr captured as text). Commands are tested this way, never imported:
  their absl flags are global to a process."""
  import os
  import pathlib
  import subprocess
  import sys

  root = pathlib.Path(__file__).resolve().parents[1]
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, **(env or {})},
  )


def read_video(path) -> tuple[np.ndarray, fractions.Fraction]:
  """(frames (F, H, W, 3) uint8, frame rate) of a video file."""
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    frames = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(stream)])
    return frames, stream.average_rate


def write_video(path, frames: list[np.ndarray], faststart: bool = False) -> None:
  """(H, W, 3) uint8 RGB frames as an MPEG-4 video at 25 fps (faststart: index at the front)."""
  options = {'movflags': 'faststart'} if faststart else {}
  with av.open(str(path), 'w', options=options) as container:
    stream = container.add_stream('mpeg4', rate=25)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = 'yuv420p'
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())
