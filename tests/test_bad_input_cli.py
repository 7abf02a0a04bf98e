"""Bad `--config` command lines: each error names the flag and the key (or
file, or preset) and says what is wrong (cxr_jax/config_cli.py).

In-process cases parse with a fresh `FlagValues`, as `main.py` does; one case
runs `main.py` itself for its exit status and message.
"""
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from cxr_jax import config_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIIM = os.path.join(ROOT, 'configs', 'siim_classifier.py')


def _parse(*args: str, config: str = f'{SIIM}:demo'):
  argv = ['main.py', f'--config={config}', *args]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  config_cli.parse_flags(argv, fv)
  return fv.config


def _plain_ml_collections(*args: str, config: str = f'{SIIM}:demo'):
  argv = ['main.py', f'--config={config}', *args]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


@pytest.mark.parametrize('args, error, says', [
    # unknown top-level key
    (['--config.foo=1'], config_cli.UnknownKeyError,
     ["--config.foo=1: unknown config key 'foo'",
      "the config has no field 'foo'", 'batch_size, checkpoint_every_steps']),
    # unknown nested key: the abbreviation first, then difflib's matches
    (['--config.optim.learning_rate=0.1'], config_cli.UnknownKeyError,
     ["--config.optim.learning_rate=0.1: unknown config key "
      "'optim.learning_rate'", "'optim' has no field 'learning_rate'",
      'Did you mean optim.lr, ']),
    (['--config.batchsize=3'], config_cli.UnknownKeyError,
     ["unknown config key 'batchsize'", 'Did you mean batch_size, ']),
    (['--config.evals.nope.x=3'], config_cli.UnknownKeyError,
     ["unknown config key 'evals.nope.x'", "'evals' has no field 'nope'"]),
    # a field below a value
    (['--config.optim.lr.x=1'], config_cli.UnknownKeyError,
     ["unknown config key 'optim.lr.x'",
      "'optim.lr' is a float (", '), which has no fields']),
    # wrong types: key, value and the expected type
    (['--config.total_steps=abc'], config_cli.KeyTypeError,
     ["--config.total_steps=abc: config key 'total_steps' expects int",
      "'abc' is not one"]),
    (['--config.optim.lr', '1e-3x'], config_cli.KeyTypeError,
     ["--config.optim.lr=1e-3x: config key 'optim.lr' expects float",
      "'1e-3x' is not one"]),
    (['--config.evals.test.final=maybe'], config_cli.KeyTypeError,
     ["config key 'evals.test.final' expects bool", "'maybe' is not one"]),
    (['--config.model=3'], config_cli.KeyTypeError,
     ["config key 'model' expects a group of fields (ConfigDict)",
      'the config has fields ', 'name, num_classes', "'3' is not one"]),
    (['--config.data.image_size=abc'], config_cli.KeyTypeError,
     ["--config.data.image_size=abc: config key 'data.image_size' expects a "
      'tuple of numbers such as (', "got ('abc',)", "'abc' is not a number"]),
])
def test_bad_override_names_the_key_and_the_problem(args, error, says):
  with pytest.raises(error) as e:
    _parse(*args)
  for text in says:
    assert text in str(e.value), str(e.value)


def test_unknown_preset_names_the_file_and_the_preset():
  with pytest.raises(config_cli.ConfigArgError) as e:
    _parse(config=f'{SIIM}:nope')
  assert f'--config={SIIM}:nope: {SIIM} rejects the preset' in str(e.value)
  assert ("Unknown config preset 'nope' in 'nope'; valid: demo, model, "
          'model_parallel.') in str(e.value)


def test_unknown_config_file_names_it_and_the_closest_files():
  typo = os.path.join(ROOT, 'configs', 'siim_clasifier.py')
  with pytest.raises(config_cli.ConfigFileError) as e:
    _parse(config=f'{typo}:demo')
  msg = str(e.value)
  assert f"config file {typo!r} does not exist" in msg, msg
  assert f'Did you mean {SIIM}' in msg, msg


def test_a_valid_command_line_parses_as_ml_collections_parses_it():
  args = ['--config.optim.lr=0.25', '--config.total_steps', '7',
          '--config.data.image_size=(32, 48)', '--config.mesh=data:-1',
          '--config.mesh=model:1', '--config.sharding_rules=fsdp',
          '--noconfig.evals.test.final', '--config.model.name=vgg_tiny']
  ours, theirs = _parse(*args), _plain_ml_collections(*args)
  assert ours.to_dict() == theirs.to_dict()
  assert (ours.optim.lr, ours.total_steps, ours.data.image_size) == (
      0.25, 7, (32, 48))
  assert not ours.evals.test.final and ours.mesh == ('data:-1', 'model:1')


def test_close_keys_prefers_initials_then_spelling():
  keys = ['optim.lr', 'optim.name', 'optim.weight_decay', 'batch_size']
  assert config_cli.close_keys('optim.learning_rate', keys)[0] == 'optim.lr'
  assert config_cli.close_keys('optim.wd', keys)[0] == 'optim.weight_decay'
  assert config_cli.close_keys('batch_sise', keys) == ['batch_size']
  assert config_cli.close_keys('zzz', keys) == []


def test_main_py_exits_1_with_the_message_and_no_traceback():
  out = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/siim_classifier.py:demo',
       '--config.optim.learning_rate=0.1'], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 1, out.stderr[-3000:]
  assert ("FATAL Flags parsing error: --config.optim.learning_rate=0.1: "
          "unknown config key 'optim.learning_rate': 'optim' has no field "
          "'learning_rate'. Did you mean optim.lr, ") in out.stderr, out.stderr
  assert 'Traceback' not in out.stderr, out.stderr
