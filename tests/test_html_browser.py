"""The HTML pages in a real browser: headless Chromium opens a Study A
report, a Study B report and a prediction index, made from tiny runs.

Chromium is driven over the DevTools protocol on a pipe (stdlib only). A
page fails on an image that does not load, a JavaScript exception or
console error, a failed resource load, an empty table, a case browser that
does not show every case, sorting that does not order the rows, or a click
on an image that does not enlarge it. Screenshots of each page (top, case
browser, an enlarged image) go to $CXR_JAX_SCREENSHOTS, else
tests/.artifacts/screenshots/ (git-ignored), printed with `pytest -s`.
Debian's `chromium` package is what `scripts/setup.sh test` installs when
it runs as root (as CI does); the tests skip, saying so, only where no
Chromium could be installed.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest

from configs import cooperative
from configs import gradcam_benchmark
from cxr_jax import jobs
from cxr_jax import predict
from cxr_jax.data import phantom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
         '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--hide-scrollbars',
         '--window-size=1400,1000', '--remote-debugging-pipe')


class Chromium:
  """Headless Chromium driven over the DevTools protocol on fds 3 and 4."""

  def __init__(self, binary: str):
    cmd_r, self._w = os.pipe()
    self._r, res_w = os.pipe()
    self._profile = tempfile.mkdtemp(prefix='chromium_profile_')

    def child_fds():  # the protocol's pipe ends at fds 3 (in) and 4 (out)
      a, b = os.dup(cmd_r), os.dup(res_w)
      os.dup2(a, 3)
      os.dup2(b, 4)

    self.proc = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
        [binary, *FLAGS, f'--user-data-dir={self._profile}', 'about:blank'],
        preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(cmd_r)
    os.close(res_w)
    self._buf, self._id, self.events = b'', 0, []

  def _next(self, deadline: float) -> dict:
    while b'\0' not in self._buf:
      ready, _, _ = select.select([self._r], [], [],
                                  max(0.0, deadline - time.time()))
      if not ready:
        raise TimeoutError('Chromium did not answer in time')
      chunk = os.read(self._r, 1 << 20)
      if not chunk:
        raise EOFError('Chromium closed its DevTools pipe')
      self._buf += chunk
    msg, self._buf = self._buf.split(b'\0', 1)
    return json.loads(msg)

  def call(self, method: str, session: str | None = None,
           timeout: float = 120.0, **params):
    self._id += 1
    msg = dict(id=self._id, method=method, params=params)
    if session:
      msg['sessionId'] = session
    os.write(self._w, json.dumps(msg).encode() + b'\0')
    deadline = time.time() + timeout
    while True:
      m = self._next(deadline)
      if m.get('id') == self._id:
        if 'error' in m:
          raise RuntimeError(f'{method}: {m["error"]}')
        return m['result']
      self.events.append(m)

  def wait_for(self, method: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not any(e.get('method') == method for e in self.events):
      self.events.append(self._next(deadline))

  def close(self) -> None:
    try:
      self.call('Browser.close', timeout=10)
      self.proc.wait(10)
    except (OSError, RuntimeError, TimeoutError, EOFError,
            subprocess.TimeoutExpired):
      self.proc.kill()
    os.close(self._w)
    os.close(self._r)
    shutil.rmtree(self._profile, ignore_errors=True)


# Loads every image (lazy ones too) and reports what the page holds.
INVENTORY = r"""(async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  const done = i => i.complete ? Promise.resolve() : new Promise(r => {
    i.addEventListener('load', r); i.addEventListener('error', r); });
  await Promise.race([Promise.all(imgs.map(done)),
                      new Promise(r => setTimeout(r, 90000))]);
  const holder = document.getElementById('cases-data');
  return {
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0))
                .map(i => i.getAttribute('src')),
    tables: [...document.querySelectorAll('table')].map(t => ({
      id: t.id, rows: t.tBodies.length ? t.tBodies[0].rows.length : 0})),
    cases: holder ? JSON.parse(holder.textContent).cases.length : null,
    title: document.title,
  };
})()"""

# Clicks a numeric value's sort key twice; checks the row order each time.
SORTING = r"""(() => {
  const data = JSON.parse(document.getElementById('cases-data').textContent);
  const numeric = b => { const [c, v] = b.dataset.key.split(':').map(Number);
    return data.cases.some(cs => typeof cs.cells[c].values[v] === 'number'); };
  const keys = [...document.querySelectorAll('#cases-table .key')];
  const key = keys.filter(numeric).pop();
  if (!key) { return {key: null}; }
  const [c, v] = key.dataset.key.split(':').map(Number);
  const seq = () => [...document.querySelectorAll('#cases-table tbody tr')]
      .map(tr => data.cases[+tr.dataset.order].cells[c].values[v]);
  const ordered = (xs, dir) => {
    const n = xs.filter(x => x !== null);
    return xs.slice(n.length).every(x => x === null) &&
        n.every((x, i) => i === 0 || dir * (x - n[i - 1]) >= 0); };
  key.click();
  const up = seq();
  key.click();
  const down = seq();
  return {key: key.title, asc: ordered(up, 1), desc: ordered(down, -1),
          rows: up.length, status: document.getElementById('cases-status')
              .textContent};
})()"""

ZOOM = r"""(() => {
  const row = document.querySelector('#cases-table tbody tr');
  const stacks = row ? row.querySelectorAll('.stack') : [];
  const target = stacks.length ? stacks[stacks.length - 1] :
      document.querySelector('figure img.zoom');
  if (!target) { return {opened: false, reason: 'no image to click'}; }
  target.click();
  const box = document.getElementById('lightbox');
  const img = box.querySelector('img');
  return {opened: box.classList.contains('open'),
          shown: !!img && img.naturalWidth > 0,
          width: box.querySelector('.stack, img').getBoundingClientRect()
              .width};
})()"""


def _problems(events) -> list[str]:
  """JavaScript exceptions, console errors and failed loads."""
  out = []
  for e in events:
    m, p = e.get('method'), e.get('params', {})
    if m == 'Runtime.exceptionThrown':
      d = p['exceptionDetails']
      out.append('exception: ' + d.get('exception', {}).get(
          'description', d.get('text', '')))
    elif m == 'Runtime.consoleAPICalled' and p.get('type') == 'error':
      out.append('console.error: ' + ' '.join(
          str(a.get('value', a.get('description', ''))) for a in p['args']))
    elif m == 'Log.entryAdded' and p['entry']['level'] == 'error':
      out.append(f'{p["entry"]["source"]}: {p["entry"]["text"]} '
                 f'{p["entry"].get("url", "")}')
  return out


def _evaluate(chrome: Chromium, session: str, script: str):
  res = chrome.call('Runtime.evaluate', session, expression=script,
                    awaitPromise=True, returnByValue=True)
  if 'exceptionDetails' in res:
    raise AssertionError(f'check script failed: {res["exceptionDetails"]}')
  return res['result']['value']


def _shot(chrome: Chromium, session: str, path: str) -> None:
  data = chrome.call('Page.captureScreenshot', session, format='png')['data']
  with open(path, 'wb') as f:
    f.write(base64.b64decode(data))


def inspect(chrome: Chromium, page: str, shots: str | None = None) -> dict:
  """Opens `page` (a file), loads every image, sorts and zooms; returns
  what was found and the problems (screenshots `shots`_*.png)."""
  target = chrome.call('Target.createTarget', url='about:blank')['targetId']
  s = chrome.call('Target.attachToTarget', targetId=target,
                  flatten=True)['sessionId']
  for domain in ('Page', 'Runtime', 'Log'):
    chrome.call(f'{domain}.enable', s)
  chrome.events.clear()
  chrome.call('Page.navigate', s, url='file://' + os.path.abspath(page))
  chrome.wait_for('Page.loadEventFired')
  found = _evaluate(chrome, s, INVENTORY)
  if shots:
    _evaluate(chrome, s, 'window.scrollTo(0, 0)')
    _shot(chrome, s, f'{shots}_top.png')
  if found['cases'] is not None:
    found['sorting'] = _evaluate(chrome, s, SORTING)
    _evaluate(chrome, s, "document.getElementById('cases').scrollIntoView()")
    if shots:
      _shot(chrome, s, f'{shots}_cases.png')
  found['zoom'] = _evaluate(chrome, s, ZOOM)
  if shots:
    _shot(chrome, s, f'{shots}_zoom.png')
  found['problems'] = _problems(chrome.events)
  chrome.call('Target.closeTarget', targetId=target)
  return found


def assert_page_ok(found: dict) -> None:
  assert found['problems'] == [], found['problems']
  assert found['images'] > 0 and found['broken'] == [], found['broken']
  assert found['tables'], 'no table on the page'
  empty = [t for t in found['tables'] if t['rows'] == 0]
  assert not empty, f'empty tables: {empty}'
  if found['cases'] is not None:
    cases = [t for t in found['tables'] if t['id'] == 'cases-table']
    assert found['cases'] > 0 and cases[0]['rows'] == found['cases']
    s = found['sorting']
    assert s['key'] and s['asc'] and s['desc'], s
    assert s['status'].startswith(f'{found["cases"]} cases, sorted by')
  z = found['zoom']
  assert z['opened'] and z['shown'] and z['width'] > 300, z


def _browser_binary() -> str | None:
  return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.fixture(scope='module')
def chrome():
  binary = _browser_binary()
  if binary is None:
    pytest.skip('Chromium is not installed and could not be: '
                '`bash scripts/setup.sh test` installs Debian\'s chromium '
                'when run as root (apt-get); here none of '
                f'{", ".join(BROWSERS)} is on PATH.')
  c = Chromium(binary)
  yield c
  c.close()


@pytest.fixture(scope='module')
def shots():
  folder = os.environ.get('CXR_JAX_SCREENSHOTS') or os.path.join(
      ROOT, 'tests', '.artifacts', 'screenshots')
  os.makedirs(folder, exist_ok=True)
  ignore = os.path.join(os.path.dirname(folder), '.gitignore')
  if folder.startswith(os.path.join(ROOT, 'tests', '.artifacts')):
    with open(ignore, 'w') as f:
      f.write('*\n')  # the folder ignores itself
  print(f'\nScreenshots of the HTML pages: {folder}')
  return folder


@pytest.fixture(scope='module')
def study_a(tmp_path_factory):
  """Study A's report of two tiny models (6 steps each)."""
  c = gradcam_benchmark.get_config('demo')
  c.sequence = ('vgg16', 'resnet50')
  c.data.phantom_num, c.data.num_per_class = 160, 80
  c.data.split_sizes = (112, 24, 24)
  for name in c.sequence:
    s = c.stages[name]
    s.total_steps, s.eval_every_steps, s.log_every_steps = 6, 6, 6
    s.evals.test.final = False
  c.cam.bootstrap = 20
  c.cam.compare_methods = ('gradcam', 'hirescam')
  wd = str(tmp_path_factory.mktemp('study_a'))
  jobs.run(c, wd)
  return wd


@pytest.fixture(scope='module')
def study_b(tmp_path_factory):
  """Study B's report of MT-UNet and UNet_S (2 steps each)."""
  c = cooperative.get_config('demo')
  c.sequence = ('mtunet', 'unet_s')
  c.data.phantom_num, c.data.num_test = 60, 20
  for name in c.sequence:
    s = c.stages[name]
    s.total_steps, s.eval_every_steps, s.log_every_steps = 2, 2, 2
    for e in s.evals.values():
      e.final = False
  c.bootstrap = 20
  wd = str(tmp_path_factory.mktemp('study_b'))
  jobs.run(c, wd)
  return wd


@pytest.fixture(scope='module')
def prediction(study_a, tmp_path_factory):
  """Study A's resnet50 stage predicting fresh phantom DICOMs and a
  corrupt file."""
  scans = tmp_path_factory.mktemp('scans')
  phantom.write('siim', str(scans / 'siim'), 6, 11, 128)
  (scans / 'corrupt.dcm').write_bytes(b'not a DICOM file')
  run, heads = predict.open_run(os.path.join(study_a, 'resnet50'),
                                ['gradcam', 'hirescam'])
  out = str(tmp_path_factory.mktemp('prediction'))
  summary = predict.predict(run, heads, [str(scans)], out)
  assert summary.predicted == 6
  assert [e.path for e in summary.errors] == [str(scans / 'corrupt.dcm')]
  return out


def test_the_checks_catch_a_missing_image_and_a_script_error(chrome,
                                                            tmp_path):
  page = tmp_path / 'bad.html'
  page.write_text('<!DOCTYPE html><title>bad</title><table><tbody>'
                  '</tbody></table><img src="absent.png"><script>'
                  'undefinedFunction();</script>')
  found = inspect(chrome, str(page))
  assert found['broken'] == ['absent.png']
  assert any('undefinedFunction' in p for p in found['problems'])
  assert any('absent.png' in p for p in found['problems'])
  assert found['tables'] == [{'id': '', 'rows': 0}]
  with pytest.raises(AssertionError):
    assert_page_ok(found)


def test_study_a_report_page(chrome, shots, study_a):
  found = inspect(chrome, os.path.join(study_a, 'report', 'report.html'),
                  os.path.join(shots, 'study_a_report'))
  assert_page_ok(found)
  assert found['title'] == ('Study A: Grad-CAM reliability across '
                            'architectures')
  assert found['cases'] == 24  # every test image


def test_study_b_report_page(chrome, shots, study_b):
  found = inspect(chrome, os.path.join(study_b, 'report', 'report.html'),
                  os.path.join(shots, 'study_b_report'))
  assert_page_ok(found)
  assert found['cases'] == 20


def test_prediction_index_page(chrome, shots, prediction):
  found = inspect(chrome, os.path.join(prediction, 'index.html'),
                  os.path.join(shots, 'prediction_index'))
  assert_page_ok(found)
  assert found['cases'] == 6
  # The input and both CAM overlays of every case, and the errors table.
  assert found['images'] == 6 * 3
  assert {'id': '', 'rows': 1} in found['tables']
