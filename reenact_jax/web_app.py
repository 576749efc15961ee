"""The reenactment web page: a Gradio app around reenactment.reenact.

The command is `python -m reenact_jax.app`. The page takes a source portrait (upload, paste or
webcam; the bundled astronaut is an example) and a driving video (upload or webcam recording;
the bundled carphone clip is an example), the motion mode, smoothing, paste-back and
side-by-side; it shows a progress bar while it renders, then the result video (with the driving
clip's audio), a download link and the motion report (how well the output follows the driving
clip). A bad upload (no face, not a video, too large) shows the command line's message in the
page. One model serves every request, one request at a time (Gradio's queue).

Everything is served from this machine: the page's fonts are the browser's own (no web fonts),
and nothing is shared or reported (no share link, no analytics).
"""

import os
import pathlib
import uuid

import gradio as gr
import numpy as np

from reenact_jax import bundled, reenactment

TITLE = 'reenact_jax'
# System fonts only: the default theme would fetch Google Fonts from the browser.
THEME = gr.themes.Default(
  font=['system-ui', 'Helvetica', 'Arial', 'sans-serif'],
  font_mono=['ui-monospace', 'Consolas', 'monospace'],
)
REPORT_MEASURES = ('mouth_opening', 'eye_opening', 'yaw', 'pitch', 'roll')


def summary_markdown(summary: dict) -> str:
  """The reenactment's summary and motion report as a short Markdown text."""
  lines = [
    f'**{summary["frames"]} frames** at {summary["video_fps"]:.2f} fps from '
    f'{reenactment.model_name(summary["step"])}, {summary["motion"]} motion, in '
    f'{summary["seconds"]:.1f} s.',
    *reenactment.summary_notes(summary),
  ]
  report = summary['report']
  if report is not None:
    lines.append(
      f'**Motion report**: a face is found in {report["face_found_fraction"]:.0%} of the output '
      'frames. Correlation with the driving clip (1 = follows it exactly):'
    )
    lines.append('| measure | correlation |\n|---|---|')
    for name in REPORT_MEASURES:
      value = report['correlation'].get(name)
      shown = '-' if value is None or not np.isfinite(value) else f'{value:.2f}'
      lines[-1] += f'\n| {name.replace("_", " ")} | {shown} |'
  return '\n\n'.join(lines)


def _error(message: str) -> gr.Error:
  """An error shown in the page until the user closes it."""
  return gr.Error(message, duration=None)


def build(renderer: reenactment.Renderer, output_dir: str | os.PathLike) -> gr.Blocks:
  """The page, rendering with `renderer` into files under `output_dir`."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  example_source, example_driving = bundled.example_inputs(output_dir)
  model = reenactment.model_name(None if renderer.prior_only else renderer.step)

  def run(
    source,
    driving,
    motion,
    smoothing,
    find_best_frame,
    paste_back,
    side_by_side,
    progress=gr.Progress(track_tqdm=True),  # Shows reenact's tqdm bars in the page.
  ):
    if not source:
      raise _error('Choose a source portrait (an image with one clearly visible face).')
    if not driving:
      raise _error(
        'Choose a driving video: upload a clip or record one with the webcam (a file the '
        'browser cannot read as a video is not taken).'
      )
    output = output_dir / f'reenacted_{uuid.uuid4().hex[:12]}.mp4'
    options = reenactment.Options(
      motion=motion,
      smoothing=float(smoothing),
      find_best_frame=bool(find_best_frame),
      paste_back=bool(paste_back),
      side_by_side=bool(side_by_side),
      report=True,
    )
    try:
      summary = reenactment.reenact(
        None, source, driving, output, options, renderer=renderer, progress=True
      )
    except reenactment.ReenactError as error:
      raise _error(str(error)) from error
    side = summary['side_by_side']
    return (
      summary['output'],
      gr.Video(value=side, visible=side is not None),
      summary['output'],
      summary_markdown(summary),
    )

  # Gradio's copies of uploads and results older than a day are deleted every hour.
  with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 86400)) as page:
    gr.Markdown(
      f'# {TITLE}\nOne-shot face reenactment through dense 3D facial flow: the portrait takes '
      f'the head motion and expressions of the driving video. Model: {model}, '
      f'{renderer.image_size}² pixels.'
    )
    with gr.Row():
      with gr.Column():
        source = gr.Image(
          type='filepath',
          label='Source portrait',
          sources=['upload', 'clipboard', 'webcam'],
          elem_id='source',
        )
        driving = gr.Video(label='Driving video', sources=['upload', 'webcam'], elem_id='driving')
        gr.Examples([[str(example_source), str(example_driving)]], [source, driving])
        motion = gr.Radio(
          list(reenactment.MOTIONS),
          value='auto',
          label='Motion',
          info='relative keeps the source face shape (different people); absolute copies the '
          "driving face's place and shape (the same person); auto chooses.",
        )
        smoothing = gr.Slider(
          0.0, 5.0, value=1.0, step=0.1, label='Smoothing of the driving landmarks (0 = off)'
        )
        find_best_frame = gr.Checkbox(
          label='Anchor the motion at the driving frame whose expression matches the source'
        )
        paste_back = gr.Checkbox(label='Paste the result back into the full portrait')
        side_by_side = gr.Checkbox(label='Also show source | driving | result side by side')
        button = gr.Button('Reenact', variant='primary', elem_id='reenact')
      with gr.Column():
        result = gr.Video(label='Result', interactive=False, elem_id='result')
        side = gr.Video(label='Side by side', interactive=False, visible=False, elem_id='side')
        download = gr.File(label='Download', interactive=False, elem_id='download')
        report = gr.Markdown(elem_id='report')
    button.click(
      run,
      [source, driving, motion, smoothing, find_best_frame, paste_back, side_by_side],
      [result, side, download, report],
    )
  return page


def launch(
  page: gr.Blocks, output_dir: str | os.PathLike, *, host: str, port: int, max_upload_mb: int
) -> None:
  """Serves `page` on http://host:port until interrupted (one request renders at a time)."""
  page.queue(default_concurrency_limit=1).launch(
    server_name=host,
    server_port=port,
    share=False,
    max_file_size=f'{max_upload_mb}mb',
    allowed_paths=[str(output_dir), str(bundled.carphone_path().parent)],
    theme=THEME,
    footer_links=[],
    quiet=True,
  )
