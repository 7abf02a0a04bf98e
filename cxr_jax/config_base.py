"""The trainer's config keys with their defaults; every config starts here.

Config files (`configs/*.py`) call `train_config()` and set what differs, so
that every knob the trainer reads exists in every config and can be
overridden with `--config.key=value` (the config is locked: a typo is an
error naming the key).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from cxr_jax.data import augment

# The keys of every `config.evals` entry (`evaluator`), besides the
# evaluator type's own keyword arguments.
EVALUATOR_KEYS = ('type', 'split', 'every_steps', 'final')


def evaluator(type: str, split: str, *, every_steps: int = 0,  # pylint: disable=redefined-builtin
              final: bool = False, **kwargs: Any) -> dict[str, Any]:
  """A `config.evals` entry: evaluator `type` on `split`.

  Args:
    type: an `cxr_jax.evaluators.EVALUATORS` name ('loss', 'classification',
      'saliency', 'cam_localization').
    split: the dataset split it evaluates ('val', 'test', ...).
    every_steps: > 0 evaluates every that many steps, 0 once per epoch
      (`config.eval_every_steps`), -1 never during training.
    final: also evaluate the best checkpoint at the end of training
      (`final_metrics.json`).
    **kwargs: the evaluator type's own keyword arguments (e.g.
      `task='binary'` of 'classification').
  """
  return dict(type=type, split=split, every_steps=every_steps, final=final,
              **kwargs)


def train_config() -> ml_collections.ConfigDict:
  """Every key `cxr_jax.train.run` reads, at its default."""
  c = ml_collections.ConfigDict()
  c.job = 'train'
  c.seed = 0
  c.data = ml_collections.ConfigDict()  # a dataset's default_config()
  c.augment = augment.default_config()
  c.batch_size = 16          # global batch, split over devices and hosts
  c.eval_batch_size = 32
  c.num_workers = 2          # grain worker processes (0 = in-process)
  # Device mesh: (axis name, size) pairs, -1 = the remaining devices. Batches
  # are split over 'data' only; another axis, e.g. (('data', -1),
  # ('model', 4)), exists to shard parameters (see cxr_jax/runtime/sharding.py).
  c.mesh = (('data', -1),)
  # Parameter layout over the mesh: (regex over '/'-joined parameter paths,
  # spec) pairs and preset names, first match wins, unmatched = replicated.
  # spec: a PartitionSpec-like tuple ((None, 'model')), 'replicate',
  # 'fsdp' or 'fsdp:<axis>'. Presets: 'fsdp', 'megatron_vit', 'replicate'.
  # The optimizer state follows the parameters. () = all replicated.
  c.sharding_rules = ()
  c.model = ml_collections.ConfigDict(dict(name='resnet50', num_classes=2,
                                           in_chans=1, dtype='float32'))
  c.model_inputs = ()        # batch fields passed to the model as kwargs
  c.loss = ml_collections.ConfigDict(dict(name='ce', label_smoothing=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0,
      weight_decay=0.0, grad_clip_norm=0.0))
  # (regex over '/'-joined parameter paths, overrides of optim or None =
  # frozen); first match wins; every parameter must match.
  c.schedule = (('.*', {}),)
  # Initial weights: a converted checkpoint or an earlier run's workdir (its
  # best checkpoint); in a `sequence` job `from_stage` names an earlier stage.
  c.init = ml_collections.ConfigDict(dict(path='', from_stage='', rules=(),
                                          dont_load=()))
  c.total_epochs = 50.0
  c.total_steps = 0          # > 0 overrides total_epochs
  c.eval_every_steps = 0     # 0 = once per epoch
  c.checkpoint_every_steps = 0  # 0 = at every evaluation
  c.log_every_steps = 10
  c.progress_every_s = 30.0
  c.evals = ml_collections.ConfigDict()
  c.evals.val = evaluator('loss', 'val')
  # The best checkpoint, reduce-on-plateau and early stopping follow this
  # '<evaluator>/<metric>' ('' = none: the last step is the best).
  c.select_metric = 'val/loss'
  c.select_mode = 'min'
  c.select_min_delta = 0.0
  # A NaN/inf selection metric: 'error' stops training naming the metric and
  # step; 'worst' ranks it below every finite value (with a warning).
  c.select_nonfinite = 'error'
  c.early_stopping_patience = 10  # evaluations without improvement; 0 = off
  c.plateau_patience = 5          # evaluations; 0 = off
  c.plateau_factor = 0.1
  c.plateau_min_scale = 1e-3
  # Resuming a workdir whose config.json differs in a key that defines the
  # run is an error; True accepts the change and records it in config.json's
  # `history` (`cxr_jax.training.resume`).
  c.allow_config_change = False
  return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config-file preset string such as 'demo,model=vit_b16'.

  A bare word sets a boolean default to True; `key=value` casts `value` to the
  default's type. Unknown keys are an error listing the valid ones.
  """
  out = ml_collections.ConfigDict(defaults)
  for part in filter(None, (arg or '').split(',')):
    key, eq, value = part.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'Unknown config preset {key!r} in {arg!r}; valid: '
                       f'{", ".join(sorted(defaults))}.')
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f'Config preset {key!r} needs a value ({key}=...).')
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      out[key] = type(default)(value)
  return out


def sequence_config() -> ml_collections.ConfigDict:
  """A `sequence` job: stages (train configs) run in order, then a report.

  `init_dir`: a folder of converted weights, one `<init_dir>/<network>/`
  per network (what `python -m cxr_jax.convert --all` writes); when set,
  every stage without `init.from_stage` whose network has published ImageNet
  weights (`models.IMAGENET_PRETRAINED`) starts from its folder
  (`jobs.stage_config`). '' = each stage's own `init.path`.
  """
  c = ml_collections.ConfigDict()
  c.job = 'sequence'
  c.seed = 0
  c.data = ml_collections.ConfigDict()
  c.sequence = ()
  c.stages = ml_collections.ConfigDict()
  c.init_dir = ''
  c.report = ''
  return c
