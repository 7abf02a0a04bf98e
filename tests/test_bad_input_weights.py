"""Bad weight files and checkpoints: each error names the item and the fault.

Every case asserts the exception type, that the message names the file,
folder or variable, and that it says what is wrong.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from cxr_jax import ckpt
from cxr_jax import convert
from cxr_jax import weights

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _densenet_tiny_sd() -> dict[str, np.ndarray]:
  torch.manual_seed(0)
  m = torchvision.models.DenseNet(growth_rate=4, block_config=(1, 1, 1, 1),
                                  num_init_features=8, bn_size=4,
                                  num_classes=3)
  return {k: v.numpy().copy() for k, v in m.state_dict().items()}


@pytest.fixture
def st_file(tmp_path) -> str:
  path = str(tmp_path / 'densenet.safetensors')
  safetensors.numpy.save_file(_densenet_tiny_sd(), path)
  return path


def _raises(exc, fn, *args, names: str, says: tuple[str, ...]) -> str:
  with pytest.raises(exc) as e:
    fn(*args)
  msg = str(e.value)
  assert names in msg, msg
  for s in says:
    assert s in msg, msg
  return msg


# -- weight files -------------------------------------------------------------


def test_truncated_safetensors(st_file):
  data = open(st_file, 'rb').read()
  with open(st_file, 'wb') as f:
    f.write(data[:len(data) - 100])
  _raises(convert.WeightFileError, convert.load_state_dict, st_file,
          names=st_file, says=('truncated', 'tensors need'))


def test_safetensors_cut_inside_its_header(st_file):
  data = open(st_file, 'rb').read()
  with open(st_file, 'wb') as f:
    f.write(data[:5])
  _raises(convert.WeightFileError, convert.load_state_dict, st_file,
          names=st_file, says=('truncated',))


def test_empty_safetensors(tmp_path):
  path = str(tmp_path / 'empty.safetensors')
  open(path, 'wb').close()
  _raises(convert.WeightFileError, convert.load_state_dict, path,
          names=path, says=('empty',))


def test_pickle_renamed_safetensors(tmp_path):
  path = str(tmp_path / 'model.safetensors')
  torch.save({'w': torch.ones(3)}, path)
  msg = _raises(convert.WeightFileError, convert.load_state_dict, path,
                names=path, says=('torch.save file', 'not safetensors',
                                  '.pth'))
  assert 'SafetensorError' not in msg.split('(safetensors:')[0]


class _Evil:
  """Unpickling this runs a function: what weights_only=True refuses."""

  def __reduce__(self):
    return (print, ('unpickled!',))


@pytest.mark.parametrize('make,culprit', [
    (lambda: {'x': _Evil()}, 'print'),
    (lambda: torch.nn.Linear(2, 2), 'torch.nn.modules.linear.Linear')])
def test_pth_with_code_is_refused_with_a_safe_recipe(tmp_path, make, culprit):
  path = str(tmp_path / 'evil.pth')
  torch.save(make(), path)
  msg = _raises(convert.WeightFileError, convert.load_state_dict, path,
                names=path, says=('contains pickled Python code', culprit,
                                  'will not be loaded',
                                  'torch.save(model.state_dict()',
                                  'safetensors'))
  assert 'weights_only=False' not in msg and 'weights_only` set' not in msg


def test_truncated_pth(tmp_path):
  path = str(tmp_path / 'w.pth')
  torch.save({'w': torch.ones(1000)}, path)
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  _raises(convert.WeightFileError, convert.load_state_dict, path,
          names=path, says=('truncated or corrupt',))


def test_safetensors_named_pth(tmp_path):
  path = str(tmp_path / 'w.pth')
  safetensors.numpy.save_file({'w': np.ones(3, np.float32)}, path)
  _raises(convert.WeightFileError, convert.load_state_dict, path,
          names=path, says=('not a torch.save file', '.safetensors'))


def test_pth_entry_that_is_not_a_tensor(tmp_path):
  path = str(tmp_path / 'w.pth')
  torch.save({'w': torch.ones(2), 'lr': 0.1}, path)
  _raises(convert.WeightFileError, convert.load_state_dict, path,
          names="'lr'", says=(path, 'not a tensor'))


def test_missing_weight_file(tmp_path):
  path = str(tmp_path / 'nope.safetensors')
  _raises(FileNotFoundError, convert.load_state_dict, path, names=path,
          says=('no such weight file',))


def test_weights_of_another_family(st_file):
  _raises(KeyError, convert.convert, 'resnet_tiny', st_file,
          names=st_file, says=("'conv1.weight'", 'another model'))


def test_weights_of_another_variant(st_file):
  _raises(ValueError, convert.convert, 'densenet121', st_file,
          names=st_file, says=("does not fit DenseNet variant '121'",
                               'features.conv0.weight: (7, 7, 3, 8) as '
                               'params/conv0/kernel, the model has '
                               '(7, 7, 3, 64)', 'no tensor filled',
                               'denseblock1/denselayer2'))


# -- checkpoints --------------------------------------------------------------


def _state(head: int, extra: bool = False) -> dict:
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 4))},
            'head': {'kernel': jnp.ones((4, head))}}
  if extra:
    params['proj'] = {'kernel': jnp.ones((4, 4))}
  return {'params': params, 'step': jnp.asarray(0, jnp.int32)}


def test_resume_with_another_model(tmp_path):
  wd = str(tmp_path / 'wd')
  c = ckpt.Checkpointer(wd)
  c.save_latest(5, _state(2), {'epoch': 1}, {'best_value': None})
  c.close()
  c = ckpt.Checkpointer(wd)
  try:
    msg = _raises(ValueError, c.restore_latest, _state(3, extra=True),
                  names=os.path.join(wd, 'ckpt', '5'),
                  says=('does not fit this run',
                        'params/head/kernel (4, 2) in the checkpoint, '
                        '(4, 3) here', '1 only in this run',
                        'params/proj/kernel', 'new workdir'))
  finally:
    c.close()
  assert 'Metadata keys' not in msg and 'Requested shape' not in msg


def test_restore_best_of_another_model(tmp_path):
  wd = str(tmp_path / 'wd')
  c = ckpt.Checkpointer(wd)
  c.save_best(7, {'params': _state(2)['params']}, {'step': 7})
  c.close()
  like = {'params': _state(3)['params']}
  _raises(ValueError, weights.restore, wd, like, names=os.path.join(
      wd, 'best', '7'), says=('do not fit the model', 'params/head/kernel',
                              '(4, 2) in the checkpoint'))
  np.testing.assert_array_equal(
      weights.restore(wd, {'params': _state(2)['params']})['params']['head'][
          'kernel'], 1)


def test_init_from_another_model(tmp_path):
  wd = str(tmp_path / 'stage1')
  c = ckpt.Checkpointer(wd)
  c.save_best(1, {'params': _state(2)['params']}, {'step': 1})
  c.close()
  init = ml_collections.ConfigDict(dict(path=wd, rules=(), dont_load=()))
  new = {'params': {'conv': {'kernel': np.zeros((3, 3, 1, 8), np.float32)},
                    'head': {'kernel': np.zeros((8, 2), np.float32)}}}
  _raises(ValueError, weights.init_from, init, new, names=wd,
          says=('mis-shaped', 'params/conv/kernel', '(3, 3, 1, 8)'))


def test_restore_from_a_folder_without_checkpoint(tmp_path):
  path = str(tmp_path / 'empty_run')
  os.makedirs(path)
  _raises(FileNotFoundError, weights.restore, path, names=path,
          says=('no best checkpoint',))


def test_save_fails_with_no_space_left(tmp_path, monkeypatch):
  c = ckpt.Checkpointer(str(tmp_path / 'wd'))

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(c.best, 'save', full)
  with pytest.raises(OSError) as e:
    c.save_best(3, {'params': _state(2)['params']}, {'step': 3})
  assert e.value.errno == 28
  assert os.path.join(str(tmp_path / 'wd'), 'best') in str(e.value)
  assert 'No space left on device' in str(e.value)
  c.close()


_WRITE_FAILS = textwrap.dedent('''
    import resource, signal, sys
    import jax.numpy as jnp, numpy as np
    from cxr_jax import ckpt
    state = {'w': jnp.asarray(np.random.rand(300, 400), jnp.float32)}
    c = ckpt.Checkpointer(sys.argv[1])
    try:
      c.save_latest(1, state, {}, {})
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail: EFBIG
      resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
      c.save_latest(2, state, {}, {})
    finally:
      c.close()
''')


def test_failed_write_is_the_last_error_printed(tmp_path):
  wd = str(tmp_path / 'wd')
  r = subprocess.run([sys.executable, '-c', _WRITE_FAILS, wd], cwd=_ROOT,
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('OSError: [Errno 27]'), r.stderr[-3000:]
  assert os.path.join(wd, 'ckpt') in last and 'File too large' in last
  assert 'Event loop is closed' not in r.stderr
  assert os.listdir(os.path.join(wd, 'ckpt', '1'))  # step 1 is kept
