"""Prediction on new images (`cxr_jax.predict`): parity with the evaluator,
bad inputs, folders, PNG/JPEG, run folders that are not runs, and what each
kind of run predicts."""
from __future__ import annotations

import csv
import glob
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from benchmarks import predict as bench
from configs import siim_classifier
from configs import study_b
from cxr_jax import jobs
from cxr_jax import models
from cxr_jax import predict
from cxr_jax import runs
from cxr_jax.data import build_dataset
from cxr_jax.data import dicom
from cxr_jax.data import egd
from cxr_jax.data import phantom
from cxr_jax.data import siim
from cxr_jax.evaluators import classification as cls_eval
from cxr_jax.predict import inputs as inputs_lib
from cxr_jax.predict import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
  """A Study A demo classifier (resnet_tiny, 64 px) trained for 4 steps."""
  c = siim_classifier.get_config('demo')
  c.total_steps = 4
  c.eval_every_steps = 4
  c.evals.test.final = False
  wd = str(tmp_path_factory.mktemp('siim_run'))
  jobs.run(c, wd)
  return wd


@pytest.fixture(scope='module')
def test_dicoms(classifier):
  """The phantom's DICOM files of the run's test split, in split order."""
  cfg = runs.read_config(classifier).data
  test = build_dataset(cfg)['test']
  ids = siim.study_list(cfg)
  found = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(
      os.path.join(siim.phantom_root(cfg), '**', '*.dcm'), recursive=True)}
  return [found[ids[int(i)]] for i in test['index']], test


def test_csv_probabilities_equal_the_evaluators(classifier, test_dicoms,
                                                tmp_path):
  files, test = test_dicoms
  run, heads = predict.open_run(classifier, ['gradcam'])
  assert heads.classes == siim.CLASS_NAMES and heads.maps == ('gradcam',)
  out = str(tmp_path / 'out')
  summary = predict.predict(run, heads, files, out, batch_size=8)
  assert summary.ok and summary.predicted == len(files)
  rows = {r['file']: r for r in _read(os.path.join(out, 'predictions.csv'))}
  got = np.array([[float(rows[f]['p_healthy']),
                   float(rows[f]['p_pneumothorax'])] for f in files])
  ctx = run.eval_context({'test': test})
  want = cls_eval.Evaluator(ctx, split='test').predict(run.variables)
  np.testing.assert_allclose(got, want['probs'], atol=1e-6, rtol=0)
  names = {'p_healthy': 0, 'p_pneumothorax': 1}
  for f in files:
    r = rows[f]
    assert r['predicted_class'] == max(names, key=lambda k: float(r[k]))[2:]
    assert r['run'] == run.workdir and len(r['config_hash']) == 12
    stem = os.path.join(out, 'overlays', os.path.splitext(
        os.path.basename(f))[0])
    for suffix in ('input', 'gradcam'):
      with Image.open(f'{stem}_{suffix}.png') as im:
        assert im.size == (64, 64)
  assert _read(os.path.join(out, 'errors.csv')) == []
  assert os.path.getsize(os.path.join(out, 'index.html')) > 0


def _mixed_folder(root, test_dicoms):
  """A folder tree: DICOMs at two depths (two with the same file name), a
  PNG, a JPEG, a corrupt .dcm, a text file and a hidden file."""
  files, _ = test_dicoms
  (root / 'a' / 'b').mkdir(parents=True)
  shutil.copy(files[0], root / 'one.dcm')
  shutil.copy(files[1], root / 'a' / 'one.dcm')
  shutil.copy(files[2], root / 'a' / 'b' / 'THREE.DCM')
  shutil.copy(files[3], root / 'a' / 'b' / 'no_extension')
  img = dicom.read_image(files[0])
  Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(
      root / 'a' / 'png16.png')
  Image.fromarray(np.round(img * 255).astype(np.uint8)).save(
      root / 'a' / 'eight.jpg', quality=95)
  (root / 'a' / 'corrupt.dcm').write_bytes(b'\x00' * 200 + b'not a DICOM')
  (root / 'notes.txt').write_text('not an image')
  (root / '.hidden.dcm').write_bytes(b'hidden')
  return img


def test_find_walks_folders_recursively(tmp_path, test_dicoms):
  _mixed_folder(tmp_path / 'scans', test_dicoms)
  found, missing, passed_over = inputs_lib.find(
      [str(tmp_path / 'scans'), str(tmp_path / 'nowhere.dcm')])
  assert sorted(i.name for i in found) == [
      'scans/a/b/THREE.DCM', 'scans/a/b/no_extension', 'scans/a/corrupt.dcm',
      'scans/a/eight.jpg', 'scans/a/one.dcm', 'scans/a/png16.png',
      'scans/one.dcm']
  assert passed_over == 1  # notes.txt; the hidden file is skipped
  assert [(e.path, e.reason) for e in missing] == [
      (str(tmp_path / 'nowhere.dcm'), 'no such file or folder')]
  # One folder: names relative to it; a file: its name, made unique.
  found, _, _ = inputs_lib.find([str(tmp_path / 'scans' / 'a'),
                                 str(tmp_path / 'scans' / 'one.dcm')])
  assert 'a/one.dcm' in [i.name for i in found]
  found, _, _ = inputs_lib.find([str(tmp_path / 'scans' / 'one.dcm'),
                                 str(tmp_path / 'scans' / 'a' / 'one.dcm')])
  assert [i.name for i in found] == ['one.dcm', 'one.dcm~2']


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'cxr_jax.predict', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        check=False)


def test_cli_reports_a_corrupt_file_and_predicts_the_others(
    classifier, test_dicoms, tmp_path):
  _mixed_folder(tmp_path / 'scans', test_dicoms)
  out = tmp_path / 'out'
  res = _cli(f'--run={classifier}', f'--inputs={tmp_path / "scans"}',
             f'--out={out}', '--save_maps')
  assert res.returncode == 1, res.stderr
  bad = str(tmp_path / 'scans' / 'a' / 'corrupt.dcm')
  assert f'{bad}: not a readable DICOM file' in res.stderr
  errors = _read(out / 'errors.csv')
  assert [e['file'] for e in errors] == [bad]
  assert 'not a readable DICOM file' in errors[0]['reason']
  rows = {os.path.relpath(r['file'], tmp_path / 'scans'): r
          for r in _read(out / 'predictions.csv')}
  assert sorted(rows) == ['a/b/THREE.DCM', 'a/b/no_extension', 'a/eight.jpg',
                          'a/one.dcm', 'a/png16.png', 'one.dcm']
  for r in rows.values():
    assert float(r['p_healthy']) + float(r['p_pneumothorax']) == (
        pytest.approx(1.0, abs=1e-6))
  # A 16-bit PNG of the DICOM's pixels predicts what the DICOM does.
  assert float(rows['a/png16.png']['p_pneumothorax']) == pytest.approx(
      float(rows['one.dcm']['p_pneumothorax']), abs=1e-3)
  cam = np.load(out / 'maps' / 'a' / 'b' / 'THREE_gradcam.npy')
  assert cam.shape == (64, 64) and 0.0 <= cam.min() <= cam.max() <= 1.0
  assert (out / 'overlays' / 'a' / 'one_gradcam.png').exists()
  assert (out / 'overlays' / 'one_gradcam.png').exists()
  assert 'corrupt.dcm' in (out / 'index.html').read_text()


def test_strict_stops_at_the_first_bad_file(classifier, test_dicoms,
                                            tmp_path):
  files, _ = test_dicoms
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'\x89PNG but truncated')
  run, heads = predict.open_run(classifier, [])
  out = str(tmp_path / 'out')
  with pytest.raises(predict.BadInputError, match=r'bad\.png: cannot read'):
    predict.predict(run, heads, [files[0], str(bad), files[1]], out,
                    batch_size=4, strict=True)
  assert [r['file'] for r in _read(os.path.join(out, 'predictions.csv'))] == [
      files[0]]
  assert [r['file'] for r in _read(os.path.join(out, 'errors.csv'))] == [
      str(bad)]
  assert 'stopped at the first file' in open(
      os.path.join(out, 'index.html')).read()


def test_a_folder_that_is_not_a_finished_run(classifier, tmp_path):
  with pytest.raises(FileNotFoundError, match='has no config.json'):
    predict.open_run(str(tmp_path), ['gradcam'])
  unfinished = tmp_path / 'unfinished'
  unfinished.mkdir()
  shutil.copy(os.path.join(classifier, 'config.json'), unfinished)
  with pytest.raises(FileNotFoundError, match=r'has no best checkpoint'):
    predict.open_run(str(unfinished), ['gradcam'])
  res = _cli(f'--run={unfinished}', f'--inputs={tmp_path}',
             f'--out={tmp_path / "out"}')
  assert res.returncode == 2
  assert f'error: {unfinished} has no best checkpoint' in res.stderr
  with pytest.raises(ValueError, match='Unknown CAM method'):
    predict.open_run(classifier, ['gradcamm'])


def _tiny(config):
  config.model.name = ('cooperative_tiny' if config.model.name.startswith(
      'cooperative') else config.model.name)
  return config


def test_full_cooperative_model_gives_three_classes_and_a_gaze_map(tmp_path):
  a = study_b.args('demo')
  wd = bench.fake_run(str(tmp_path / 'stage3'), _tiny(study_b.stage3(a)))
  phantom.write('gaze', str(tmp_path / 'egd'), 3, 0, 128)
  scans = sorted(glob.glob(str(tmp_path / 'egd' / 'files' / '**' / '*.dcm'),
                           recursive=True))
  run, heads = predict.open_run(wd, ['gradcam'])
  assert heads.classes == egd.CLASS_NAMES and heads.maps == ('gradcam',
                                                             'gaze')
  out = tmp_path / 'out'
  summary = predict.predict(run, heads, scans, str(out), save_maps=True)
  assert summary.ok
  rows = _read(out / 'predictions.csv')
  assert len(rows) == 3
  for r in rows:
    p = [float(r[f'p_{c}']) for c in egd.CLASS_NAMES]
    assert sum(p) == pytest.approx(1.0, abs=1e-6)
    assert r['predicted_class'] == egd.CLASS_NAMES[int(np.argmax(p))]
  gaze = sorted(glob.glob(str(out / 'maps' / '**' / '*_gaze.npy'),
                          recursive=True))
  assert len(gaze) == 3
  for path in gaze:
    g = np.load(path)
    assert g.shape == tuple(study_b.data(a).image_size)
    assert g.min() >= 0 and float(g.sum(dtype=np.float64)) == pytest.approx(
        1.0, abs=1e-5)


def _run(config):
  model = models.build(config.model)
  h, w = config.data.image_size
  extra = {k: np.zeros((1, h, w), np.float32) for k in config.model_inputs}
  variables = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, h, w, 1), np.float32), **extra))
  return runs.Run(workdir='/r/' + config.model.name, config=config,
                  model=model, variables=variables, summary={})


def test_each_kind_of_run_predicts_its_heads():
  a = study_b.args('demo')
  stage2 = model_lib.heads(_run(_tiny(study_b.stage2(a))), ['gradcam'])
  assert (stage2.classes, stage2.maps) == ((), ('gaze',))
  assert 'No CAMs (gradcam): the run predicts no class.' in stage2.notes
  unet = model_lib.heads(_run(study_b.saliency_only(a, 'unet')), [])
  assert (unet.classes, unet.maps) == ((), ('gaze',))
  dn = model_lib.heads(_run(study_b.classifier(a, 'densenet201')),
                       ['gradcam', 'hirescam'], cam_target='CHF')
  assert dn.classes == egd.CLASS_NAMES and dn.maps == ('gradcam', 'hirescam')
  assert dn.cam_target == 1
  with pytest.raises(ValueError, match=r'takes gaze as input besides the '
                     'image .*cannot predict from images alone'):
    model_lib.heads(_run(study_b.classifier(a, 'gazegnn')), [])
  contrastive = study_b.stage1_contrastive(a)
  with pytest.raises(ValueError, match=r'nothing to predict.*\[.loss.\]'):
    model_lib.heads(_run(contrastive), [])
  with pytest.raises(ValueError, match=r"cam_target 'lungs'"):
    model_lib.heads(_run(study_b.classifier(a, 'densenet201')), [],
                    cam_target='lungs')


def test_benchmark_measures_the_demo_model(tmp_path):
  row = bench.measure('demo', str(tmp_path), bench.Settings(
      images=4, batch=4, native=128, repeats=1))
  assert (row['network'], row['input'], row['images']) == ('resnet_tiny',
                                                           '128x128', 4)
  assert row['command_img_s'] > 0 and row['model_img_s'] > 0
