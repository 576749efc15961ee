"""The demo (`make demo`): the whole product on the bundled data, on CPU, in minutes.

The command is `python -m reenact_jax.demo`. `run`:
1. trains the demo config into OUTPUT/run (resuming if it is already there); the bundled clip
   and portrait are prepared on first use into OUTPUT/cache;
2. reenacts the astronaut portrait with the carphone motion, with the trained model
   (OUTPUT/reenact.mp4, OUTPUT/reenact_side_by_side.mp4: source | driving | result) and with the
   geometric prior alone, the baseline (OUTPUT/reenact_prior.mp4), each with its motion report
   (how well the output follows the driving clip: face found, correlations of mouth, eyes and
   head pose);
3. evaluates both on the held-out carphone frames (L1, PSNR, SSIM, AKD, ...), with two source
   views of that clip against one (evaluate's num_sources), and on four of those frames with
   winks, one-sided smiles and an open mouth edited into their landmarks (the fraction of each
   edit reproduced, evaluation.evaluate_expressions);
4. drives the model with the clip with synthetic occluders (hands, objects) on half of its frames
   (OUTPUT/driving_occluded.mp4 -> OUTPUT/reenact_occluded.mp4), its report scored against the
   clip without them: how much each correlation loses (occluded_driving);
5. writes OUTPUT/eval.json (all of it, model and prior side by side) and
   OUTPUT/contact_sheet.png (rows: driving | prior alone | model, at evenly spaced frames).
"""

import functools
import json
import pathlib
import time

import imageio.v3 as iio
import ml_collections
import numpy as np

from reenact_jax import (
  bundled,
  evaluation,
  expressions,
  metrics,
  occlusion,
  reenactment,
  trainer,
)

SHEET_FRAMES = 6


def contact_sheet(side_by_side: pathlib.Path, prior: pathlib.Path, output: pathlib.Path) -> None:
  """Evenly spaced frames, one column each: the source on top, then driving, prior, model."""
  panels = iio.imread(side_by_side, plugin='pyav')  # (F, S, 3 S, 3): source | driving | model
  baseline = iio.imread(prior, plugin='pyav')
  size = panels.shape[1]
  picks = np.linspace(0, len(panels) - 1, SHEET_FRAMES).round().astype(int)
  columns = []
  for index in picks:
    source, driving, model = (panels[index, :, k * size : (k + 1) * size] for k in range(3))
    columns.append(np.concatenate([source, driving, baseline[index], model], axis=0))
  iio.imwrite(output, np.concatenate(columns, axis=1))


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

  source, driving = bundled.example_inputs(output)
  results = {'train_seconds': round(train_seconds, 1)}
  videos = {}
  renderers = {}
  tracks = {}  # The carphone clip is tracked once for all runs (reenact's `tracks`).
  for name, prior_only in (('model', False), ('prior_only', True)):
    video = output / ('reenact.mp4' if not prior_only else 'reenact_prior.mp4')
    print(f'[demo] reenacting {source.name} with {driving.name} ({name})', flush=True)
    renderer = reenactment.load(workdir, prior_only=prior_only)
    renderers[name] = renderer
    summary = reenactment.reenact(
      workdir,
      source,
      driving,
      video,
      reenactment.Options(motion='relative', side_by_side=not prior_only, report=True),
      renderer=renderer,
      progress=False,
      tracks=tracks,
    )
    videos[name] = video
    renderer.config.data.cache_dir = config.data.cache_dir
    results[name] = {'reenact': summary}
    for key, protocol, what in (
      ('held_out', evaluation.evaluate, 'on the held-out carphone frames'),
      ('expressions', evaluation.evaluate_expressions, 'winks, one-sided smiles, an open mouth'),
      (
        'two_sources',
        functools.partial(evaluation.evaluate, num_sources=SOURCE_VIEWS),
        f'with {SOURCE_VIEWS} source views of the held-out clip',
      ),
    ):
      print(f'[demo] evaluating ({name}) {what}', flush=True)
      results[name][key] = protocol(
        renderer.config,
        renderer.params,
        renderer.generator,
        split='test',
        workdir=str(workdir),
        step=renderer.step,
        prior_only=prior_only,
      )

  results['occlusion'] = occluded_driving(
    renderers['model'], source, driving, output, results, tracks
  )
  results['model_minus_prior'] = compare_reports(
    results['model']['reenact']['report'], results['prior_only']['reenact']['report']
  )
  sheet = output / 'contact_sheet.png'
  contact_sheet(reenactment.side_by_side_path(videos['model']), videos['prior_only'], sheet)
  report = output / 'eval.json'
  report.write_text(json.dumps(results, indent=2) + '\n')

  outputs = {
    'video': str(videos['model']),
    'side_by_side': str(reenactment.side_by_side_path(videos['model'])),
    'prior_only': str(videos['prior_only']),
    'contact_sheet': str(sheet),
    'evaluation': str(report),
    'run': str(workdir),
    'tensorboard': str(workdir / 'tensorboard'),
  }
  _print_summary(results)
  print('[demo] done:\n' + '\n'.join(f'  {name:14s} {path}' for name, path in outputs.items()))
  return outputs


# Source views in the several-source evaluation (its first frame and the most different pose).
SOURCE_VIEWS = 2


# Synthetic occluders (hands, objects) on this fraction of the driving frames, in runs.
OCCLUDED_FRACTION = 0.5


def occluded_driving(
  renderer: reenactment.Renderer, source, driving, output: pathlib.Path, results: dict, tracks
) -> dict:
  """The model driven by the clip with synthetic occluders on OCCLUDED_FRACTION of its frames
  (OUTPUT/driving_occluded.mp4), its motion report scored against the clip without them, and
  per measure the correlation lost against the model's own report on the clean clip. `renderer`
  and `tracks` are the model's, from its clean run (the clean clip is not tracked again)."""
  clip = output / 'driving_occluded.mp4'
  print(f'[demo] occluders on {OCCLUDED_FRACTION:.0%} of the driving frames ({clip.name})')
  pasted = occlusion.write_occluded_clip(driving, clip, OCCLUDED_FRACTION, seed=0)
  summary = reenactment.reenact(
    None,
    source,
    clip,
    output / 'reenact_occluded.mp4',
    reenactment.Options(motion='relative', report=True, report_against=str(driving)),
    renderer=renderer,
    progress=False,
    tracks=tracks,
  )
  clean = results['model']['reenact']['report']['correlation']
  occluded = summary['report']['correlation']
  return {
    'clip': pasted,
    'found': {'frames': summary['occluded_frames'], 'regions': summary['occluded_regions']},
    'report': summary['report'],
    'correlation_lost': {
      name: None
      if clean[name] is None or occluded[name] is None
      else round(clean[name] - occluded[name], 4)
      for name in metrics.MOTION_MEASURES
    },
  }


def compare_reports(model: dict, prior: dict) -> dict:
  """Per motion measure, the model's correlation with the driving clip minus the prior's, over
  the frames where both outputs show a face, with its 95% paired bootstrap interval
  (metrics.compare_correlations): the model follows the driving clip better where the interval
  is above 0."""
  if 'per_frame' not in model or 'per_frame' not in prior:
    return {'skipped': 'a face in too few frames of one output'}
  model_frames = {frame: i for i, frame in enumerate(model['per_frame']['frame'])}
  prior_frames = {frame: i for i, frame in enumerate(prior['per_frame']['frame'])}
  common = sorted(set(model_frames) & set(prior_frames))
  first = [model_frames[frame] for frame in common]
  second = [prior_frames[frame] for frame in common]
  comparison = {'frames': len(common)}
  for name in metrics.MOTION_MEASURES:
    result = metrics.compare_correlations(
      np.asarray(model['per_frame']['driving'][name])[first],
      np.asarray(model['per_frame']['output'][name])[first],
      np.asarray(prior['per_frame']['output'][name])[second],
    )
    comparison[name] = {k: None if v is None else round(v, 4) for k, v in result.items()}
  return comparison


def _print_summary(results: dict) -> None:
  lines = []
  for name in ('model', 'prior_only'):
    report = results[name]['reenact']['report']
    held_out = results[name]['held_out']['metrics']
    correlation = report['correlation']
    lines.append(
      f'  {name:10s} face found {report["face_found_fraction"]:.0%}, correlation mouth '
      f'{_number(correlation["mouth_opening"])} eyes {_number(correlation["eye_opening"])} '
      f'gaze {_number(correlation["gaze_x"])}/{_number(correlation["gaze_y"])} yaw '
      f'{_number(correlation["yaw"])} pitch {_number(correlation["pitch"])} roll '
      f'{_number(correlation["roll"])}, gaze error {_number(report.get("gaze_error"), 3)}; '
      f'held-out L1 {_number(held_out.get("l1"), 4)}'
    )
  for name in ('model', 'prior_only'):
    views = results[name]['two_sources']
    lines.append(
      f'  {name:10s} held-out with {views["num_sources"]} source views vs 1: L1 '
      f'{_number(views["metrics"].get("l1"), 4)} vs {_number(views["one_source"]["l1"], 4)}, '
      f'SSIM {_number(views["metrics"].get("ssim"), 3)} vs '
      f'{_number(views["one_source"]["ssim"], 3)}'
    )
  for name in ('model', 'prior_only'):
    edited = results[name]['expressions']['metrics']
    lines.append(
      f'  {name:10s} expressions reproduced: '
      + ', '.join(
        f'{edit} {_number(edited.get(f"expression_{edit}_reproduced"))}'
        for edit in expressions.EDITS
      )
    )
  occluded = results['occlusion']
  lines.append(
    f'  model with occluders on {occluded["clip"]["occluded_frames"]} of '
    f'{occluded["clip"]["frames"]} driving frames (found in {occluded["found"]["frames"]}), '
    'correlation lost: '
    + ', '.join(
      f'{name.replace("_opening", "")} {_number(lost, 3)}'
      for name, lost in occluded['correlation_lost'].items()
    )
  )
  comparison = results['model_minus_prior']
  if 'skipped' not in comparison:
    lines.append(
      '  model - prior (95% interval): '
      + ', '.join(
        f'{name.replace("_opening", "")} {_number(c["difference"], 3)} '
        f'[{_number(c["low"], 3)}, {_number(c["high"], 3)}]'
        for name, c in ((name, comparison[name]) for name in metrics.MOTION_MEASURES)
      )
    )
  print('[demo] results:\n' + '\n'.join(lines), flush=True)


def _number(value, digits: int = 2) -> str:
  return '-' if value is None else f'{value:.{digits}f}'
