"""The web app in a real browser: headless Chromium drives the page as a user does (upload a
portrait and a clip, press Reenact, get the video; a faceless portrait shows the error).

Slow suite (CI runs it). It needs Debian's chromium and chromium-driver (`make setup-browser`)
and is skipped, saying so, where they are not installed.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse

import numpy as np
import pytest

pytest.importorskip('gradio', reason='the web page needs the app extra (gradio)')
pytest.importorskip('selenium', reason='the browser test needs selenium (the dev extra)')

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import NUM_FRAMES
from tests.helpers import read_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')
PAGE_TIMEOUT = 120  # Seconds for the app to start serving (imports, model load).
RENDER_TIMEOUT = 300  # Seconds for one reenactment of the short clip (includes compiling).

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason='no Chromium with chromedriver: run `make setup-browser` (Debian chromium, '
    'chromium-driver)',
  ),
]


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


@pytest.fixture(scope='module')
def app_url(tiny_workdir, tmp_path_factory):
  port = _free_port()
  output_dir = tmp_path_factory.mktemp('app_results')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  log = open(output_dir / 'app.log', 'w')  # noqa: SIM115 (open for the server's lifetime)
  server = subprocess.Popen(
    [sys.executable, '-m', 'reenact_jax.app', f'--workdir={tiny_workdir}', f'--port={port}']
    + [f'--output_dir={output_dir}'],
    cwd=ROOT,
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  url = f'http://127.0.0.1:{port}/'
  deadline = time.monotonic() + PAGE_TIMEOUT
  try:
    while True:
      try:  # The app is up once its port accepts a connection.
        socket.create_connection(('127.0.0.1', port), timeout=5).close()
        break
      except OSError:
        pass
      if server.poll() is not None or time.monotonic() > deadline:
        log.flush()
        pytest.fail(f'the app did not start: {(output_dir / "app.log").read_text()[-3000:]}')
      time.sleep(1)
    yield url
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture
def browser():
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage'):
    options.add_argument(argument)
  options.add_argument('--window-size=1400,1400')
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  yield driver
  driver.quit()


def _upload_and_reenact(browser, url: str, source: pathlib.Path, driving: pathlib.Path) -> None:
  browser.get(url)
  WebDriverWait(browser, 60).until(
    lambda page: page.find_elements(By.CSS_SELECTOR, '#source input[type=file]')
  )
  browser.find_element(By.CSS_SELECTOR, '#source input[type=file]').send_keys(str(source))
  browser.find_element(By.CSS_SELECTOR, '#driving input[type=file]').send_keys(str(driving))
  # The uploads are done when the page previews them.
  WebDriverWait(browser, 60).until(
    lambda page: (
      page.find_elements(By.CSS_SELECTOR, '#driving video')
      and page.find_elements(By.CSS_SELECTOR, '#source img')
    )
  )
  browser.find_element(By.CSS_SELECTOR, '#reenact').click()


def test_the_page_reenacts_uploads_and_shows_errors(app_url, browser, reenact_inputs, tmp_path):
  _upload_and_reenact(browser, app_url, reenact_inputs['source'], reenact_inputs['driving'])
  WebDriverWait(browser, RENDER_TIMEOUT).until(
    lambda page: page.find_elements(By.CSS_SELECTOR, '#result video[src]')
  )
  browser.save_screenshot(str(tmp_path / 'result.png'))
  # The page plays a file this machine's server serves: /gradio_api/file=<its local path>.
  source = browser.find_element(By.CSS_SELECTOR, '#result video').get_attribute('src')
  video = pathlib.Path(urllib.parse.unquote(source.split('file=', 1)[1]))
  assert video.is_file() and video.suffix == '.mp4', source
  frames, rate = read_video(video)
  assert frames.shape == (NUM_FRAMES, 32, 32, 3)  # configs/tiny.py image_size
  assert rate == reenact_inputs['rate']
  assert frames.std() > 2.0  # Not a blank frame.
  assert np.abs(np.diff(frames.astype(int), axis=0)).mean() > 0.5  # Not a still frame.
  report = browser.find_element(By.CSS_SELECTOR, '#report').text
  assert f'{NUM_FRAMES} frames' in report and 'Motion report' in report
  assert browser.find_elements(By.CSS_SELECTOR, '#download a')

  _upload_and_reenact(browser, app_url, reenact_inputs['grey'], reenact_inputs['driving'])
  WebDriverWait(browser, RENDER_TIMEOUT).until(lambda page: 'no face found' in page.page_source)
  assert not browser.find_elements(By.CSS_SELECTOR, '#result video[src]')
