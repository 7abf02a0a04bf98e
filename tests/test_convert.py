"""cxr_jax.convert: state-dict readers, CLI round trip, error messages."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from cxr_jax import convert
from cxr_jax import models
from cxr_jax import weights
from cxr_jax.models import layers
from cxr_jax.models import resnet
from cxr_jax.models import vgg

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
safetensors_torch = pytest.importorskip('safetensors.torch')

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def resnet18_sd():
  torch.manual_seed(0)
  return torchvision.models.resnet18(weights=None).state_dict()


def _np(sd) -> dict[str, np.ndarray]:
  return {k: v.numpy().copy() for k, v in sd.items()}


def _vgg_tiny_sd(rng=np.random.RandomState(0)) -> dict[str, np.ndarray]:
  """A torch-layout state dict for vgg_tiny (torchvision has no tiny VGG)."""
  depths, widths, hidden = vgg._VARIANTS['tiny']
  sd, n, c_in = {}, 0, 3
  for depth, width in zip(depths, widths):
    for _ in range(depth):
      sd[f'features.{n}.weight'] = rng.randn(width, c_in, 3, 3)
      sd[f'features.{n}.bias'] = rng.randn(width)
      c_in, n = width, n + 2
    n += 1
  for t, (i, o) in {0: (c_in * 49, hidden), 3: (hidden, hidden),
                    6: (hidden, 5)}.items():
    sd[f'classifier.{t}.weight'] = rng.randn(o, i)
    sd[f'classifier.{t}.bias'] = rng.randn(o)
  return {k: v.astype(np.float32) for k, v in sd.items()}


def _assert_trees_equal(a, b):
  fa, fb = layers.flatten(a), layers.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'cxr_jax.convert', *args], cwd=_ROOT,
      capture_output=True, text=True, timeout=300, check=False)


def test_cli_round_trip_safetensors_and_pth(tmp_path, resnet18_sd):
  st, pth = str(tmp_path / 'r18.safetensors'), str(tmp_path / 'r18.pth')
  safetensors_torch.save_file(dict(resnet18_sd), st)
  # Wrapped like a training checkpoint, saved from DataParallel.
  torch.save({'state_dict': {f'module.{k}': v for k, v in resnet18_sd.items()},
              'epoch': 3}, pth)
  _assert_trees_equal(convert.load_state_dict(st), _np(resnet18_sd))
  _assert_trees_equal(convert.load_state_dict(pth), _np(resnet18_sd))

  out_st, out_pth = str(tmp_path / 'a'), str(tmp_path / 'b')
  for src, out in ((st, out_st), (pth, out_pth)):
    r = _cli('--model=resnet18', f'--src={src}', f'--out={out}')
    assert r.returncode == 0, r.stderr[-3000:]
  a, b = weights.load(out_st), weights.load(out_pth)
  _assert_trees_equal(a, b)
  _assert_trees_equal(a, resnet.convert_torch(_np(resnet18_sd), variant='18'))
  assert set(a) == {'params', 'batch_stats'}
  assert a['params']['head']['kernel'].shape == (512, 1000)
  meta = json.load(open(os.path.join(out_st, 'meta.json')))
  assert meta['model'] == 'resnet18'
  assert meta['sha256'] == hashlib.sha256(open(st, 'rb').read()).hexdigest()


def test_vgg_tiny_convert_round_trip(tmp_path):
  sd = _vgg_tiny_sd()
  src = str(tmp_path / 'v.safetensors')
  safetensors.numpy.save_file(sd, src)
  variables = convert.convert('vgg_tiny', src)
  assert set(variables) == {'params'}
  np.testing.assert_array_equal(variables['params']['conv1_1']['kernel'],
                                sd['features.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['params']['head']['kernel'],
                                sd['classifier.6.weight'].T)
  weights.save(variables, str(tmp_path / 'out'))
  _assert_trees_equal(weights.load(str(tmp_path / 'out')), variables)


@pytest.mark.parametrize('family,make,variant', [
    ('resnet', None, '18'), ('vgg', _vgg_tiny_sd, 'tiny')])
def test_errors_name_the_key(family, make, variant, resnet18_sd):
  sd = make() if make else _np(resnet18_sd)
  fn = models.family(f'{family}18' if family == 'resnet' else 'vgg_tiny'
                     ).convert_torch
  bn_key = 'layer1.0.bn1.running_var' if family == 'resnet' else None
  victim = bn_key or 'features.3.bias'

  missing = dict(sd)
  del missing[victim]
  with pytest.raises(KeyError, match=victim.replace('.', r'\.')):
    fn(missing, variant=variant)

  extra = dict(sd, **{'extra.weight': np.zeros(3, np.float32)})
  with pytest.raises(KeyError, match=r'extra\.weight'):
    fn(extra, variant=variant)

  bad = dict(sd)
  bad[victim] = np.zeros(7, np.float32)
  with pytest.raises(ValueError, match=victim.replace('.', r'\.')):
    fn(bad, variant=variant)

  # num_batches_tracked is ignored; a wrong variant is reported.
  fn(dict(sd, **{'bn1.num_batches_tracked': np.array(1)}), variant=variant)
  with pytest.raises((KeyError, ValueError)):
    fn(sd, variant='34' if family == 'resnet' else '16')


def test_missing_downsample_is_reported(resnet18_sd):
  sd = {k: v for k, v in _np(resnet18_sd).items()
        if not k.startswith('layer2.0.downsample.')}
  with pytest.raises(KeyError, match='layer2_0/downsample_conv'):
    resnet.convert_torch(sd, variant='18')


def test_headless_and_one_channel(resnet18_sd):
  sd = {k: v for k, v in _np(resnet18_sd).items() if not k.startswith('fc.')}
  sd['conv1.weight'] = sd['conv1.weight'].sum(1, keepdims=True)
  variables = resnet.convert_torch(sd, variant='18')
  assert 'head' not in variables['params']
  assert variables['params']['conv1']['kernel'].shape == (7, 7, 1, 64)


def test_load_state_dict_is_safe(tmp_path, monkeypatch):
  class Evil:  # an arbitrary object that weights_only=True refuses

    def __reduce__(self):
      return (print, ('unpickled!',))

  path = str(tmp_path / 'evil.pth')
  torch.save({'x': Evil()}, path)
  with pytest.raises(Exception, match='(?i)weights_only|unpickl|global'):
    convert.load_state_dict(path)

  good = str(tmp_path / 'good.pt')
  torch.save({'w': torch.ones(2)}, good)
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match='install torch to read .pth'):
    convert.load_state_dict(good)
  with pytest.raises(ValueError, match='unknown weight format'):
    convert.load_state_dict(str(tmp_path / 'w.npz'))


def test_every_torch_family_has_convert_torch():
  """convert() dispatches to `family.convert_torch(sd, *, variant)`."""
  for name in ('vgg16', 'resnet50', 'densenet121', 'vit_b16',
               'inception_resnet_v2'):
    try:
      module = models.family(name)
    except ImportError:
      continue  # family not written yet
    sig = inspect.signature(module.convert_torch)
    assert list(sig.parameters)[0] == 'state_dict', name
    assert sig.parameters['variant'].kind == inspect.Parameter.KEYWORD_ONLY


def test_study_models_cover_the_configs():
  from configs import gradcam_benchmark  # pylint: disable=g-import-not-at-top
  assert set(gradcam_benchmark.MODELS) <= set(convert.STUDY_MODELS)
  assert {'densenet201', 'inception_resnet_v2'} <= set(convert.STUDY_MODELS)
  # The networks whose stages read init_dir are the ones --all can convert.
  assert set(convert.TORCHVISION) | set(convert.TIMM) == set(
      models.IMAGENET_PRETRAINED)
  for name in convert.STUDY_MODELS:
    models.family(name)  # a registered model
    assert convert.source_patterns(name)


def test_cli_all_converts_what_it_finds(tmp_path, resnet18_sd):
  """--all over two source folders: a torchvision file under its published
  name and a timm file in the Hugging Face hub cache's layout; a missing
  model is listed and makes the exit status 1, the others are converted."""
  timm = pytest.importorskip('timm')
  tv, hub, out = tmp_path / 'torch', tmp_path / 'hf', tmp_path / 'out'
  tv.mkdir()
  torch.save(resnet18_sd, str(tv / 'resnet18-f37072fd.pth'))
  snap = hub / ('models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k/'
                'snapshots/0123abc')
  snap.mkdir(parents=True)
  torch.manual_seed(0)
  vit_sd = timm.create_model('vit_small_patch16_224').state_dict()
  safetensors_torch.save_file(dict(vit_sd), str(snap / 'model.safetensors'))

  r = _cli('--all', f'--src_dir={tv},{hub}', f'--out_dir={out}',
           '--models=resnet18,vit_s16,densenet201')
  assert r.returncode == 1, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert any(l.split()[:1] == ['densenet201'] and 'MISSING' in l and
             'densenet201-*.pth' in l for l in lines), r.stdout
  assert 'Missing 1 of 3: densenet201' in r.stdout
  assert 'Converted 2 of 3' in r.stdout
  assert sorted(os.listdir(out)) == ['resnet18', 'vit_s16']
  _assert_trees_equal(weights.load(str(out / 'resnet18')),
                      resnet.convert_torch(_np(resnet18_sd), variant='18'))
  vit_params = weights.load(str(out / 'vit_s16'))['params']
  np.testing.assert_array_equal(vit_params['pos_embed'],
                                vit_sd['pos_embed'].numpy())
  meta = json.load(open(out / 'vit_s16' / 'meta.json'))
  assert meta['model'] == 'vit_s16' and meta['source'].endswith(
      '0123abc/model.safetensors')


def test_cli_all_lists_every_expected_file(tmp_path):
  r = _cli('--all', f'--src_dir={tmp_path}', f'--out_dir={tmp_path / "o"}')
  assert r.returncode == 1
  for name in convert.STUDY_MODELS:
    assert any(l.split()[:1] == [name] and 'MISSING' in l
               for l in r.stdout.splitlines()), (name, r.stdout)
  assert 'vgg16-*.pth' in r.stdout
  assert 'inception_resnet_v2.*/model.safetensors' in r.stdout
  assert f'Missing {len(convert.STUDY_MODELS)} of' in r.stdout
