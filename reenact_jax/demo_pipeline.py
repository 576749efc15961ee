"""The demo (`make demo`): the whole product on the bundled data, on CPU, in minutes.

The command is `python -m reenact_jax.demo`. `run`:
1. trains the demo config into OUTPUT/run (resuming if it is already there); the bundled clip
   and portrait are prepared on first use into OUTPUT/cache;
2. reenacts the astronaut portrait with the carphone motion: OUTPUT/reenact.mp4, a side-by-side
   video (source | driving | result) and a contact sheet of frames, OUTPUT/contact_sheet.png;
3. evaluates on the held-out carphone frames: OUTPUT/eval.json.
"""

import json
import pathlib
import time

import imageio.v3 as iio
import ml_collections
import numpy as np

from reenact_jax import bundled, evaluation, inference, reenactment, trainer


def write_inputs(output: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """The bundled portrait as a PNG and the path of the bundled driving clip."""
  source = output / 'astronaut.png'
  if not source.exists():
    iio.imwrite(source, bundled.portrait_images()['astronaut'])
  return source, bundled.carphone_path()


def contact_sheet(video_path: pathlib.Path, output_path: pathlib.Path, frames: int = 8) -> None:
  """A row of `frames` evenly spaced frames of a video, as a PNG."""
  video = iio.imread(video_path, plugin='pyav')
  picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
  iio.imwrite(output_path, np.concatenate([video[i] for i in picks], axis=1))


def run(config: ml_collections.ConfigDict, output: str) -> dict[str, str]:
  """Trains, reenacts and evaluates; returns {what: path} of everything written."""
  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  workdir = output / 'run'
  if not config.data.cache_dir:
    config.data.cache_dir = str(output / 'cache')

  started = time.time()
  print(f'[demo] training for {config.train.total_steps} steps in {workdir}', flush=True)
  trainer.train_and_evaluate(config, str(workdir))
  train_seconds = time.time() - started

  source, driving = write_inputs(output)
  video = output / 'reenact.mp4'
  print(f'[demo] reenacting {source.name} with {driving.name}', flush=True)
  loaded = inference.load_generator(str(workdir))
  reenactment.reenact(
    str(workdir),
    str(source),
    str(driving),
    str(video),
    relative=True,
    side_by_side=True,
    loaded=loaded,
  )
  sheet = output / 'contact_sheet.png'
  contact_sheet(video, sheet)

  print('[demo] evaluating on the held-out carphone frames', flush=True)
  loaded.config.data.cache_dir = config.data.cache_dir
  results = evaluation.evaluate(
    loaded.config,
    loaded.params,
    loaded.generator,
    split='test',
    workdir=str(workdir),
    step=loaded.step,
  )
  results['train_seconds'] = round(train_seconds, 1)
  report = output / 'eval.json'
  report.write_text(json.dumps(results, indent=2))

  outputs = {
    'video': str(video),
    'side_by_side': str(reenactment.side_by_side_path(video)),
    'contact_sheet': str(sheet),
    'evaluation': str(report),
    'run': str(workdir),
    'tensorboard': str(workdir / 'tensorboard'),
  }
  print('[demo] done:\n' + '\n'.join(f'  {name:14s} {path}' for name, path in outputs.items()))
  return outputs
