r"""The reenactment web page (Gradio), served on this machine.

  python -m reenact_jax.app --workdir=RUN_DIR [--port=7860] [--host=127.0.0.1]
  python -m reenact_jax.app --export=ARTIFACT_DIR

Open http://127.0.0.1:7860 in a browser: choose a source portrait and a driving video (or the
bundled example), the motion mode and options, and press Reenact; the page shows the result, a
download link and the motion report (reenact_jax/web_app.py). `make app` serves the demo's run
(training it first when there is none). Results are written under --output_dir (default: a new
temporary folder). --host=0.0.0.0 serves other machines too (there is no login: only on a
network you trust).
"""

import atexit
import shutil
import sys
import tempfile

from absl import app, flags

from reenact_jax import cli, reenactment, web_app

_WORKDIR, _EXPORT = cli.define_model_flags()
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to serve on.')
_PORT = flags.DEFINE_integer('port', 7860, 'Port to serve on.')
_MAX_UPLOAD_MB = flags.DEFINE_integer(
  'max_upload_mb', 200, 'Largest upload accepted, MB.', lower_bound=1
)
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder for the results (default: temp).')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  try:
    renderer = reenactment.open_renderer(_WORKDIR.value, _EXPORT.value, reenactment.Options())
  except reenactment.ReenactError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(1)
  if _OUTPUT_DIR.value:
    output_dir = _OUTPUT_DIR.value
  else:  # A folder of this server's own, removed when it stops.
    output_dir = tempfile.mkdtemp(prefix='reenact_jax_app_')
    atexit.register(shutil.rmtree, output_dir, ignore_errors=True)
  try:
    page = web_app.build(renderer, output_dir)
    print(f'Serving on http://{_HOST.value}:{_PORT.value} (results in {output_dir}); Ctrl-C stops.')
    sys.stdout.flush()
    web_app.launch(
      page, output_dir, host=_HOST.value, port=_PORT.value, max_upload_mb=_MAX_UPLOAD_MB.value
    )
  except OSError as error:  # A busy port, an unwritable --output_dir.
    print(
      f'error: cannot serve on {_HOST.value}:{_PORT.value} with results in {output_dir}: {error}',
      file=sys.stderr,
    )
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
