"""Study B building blocks: the data, every stage and every baseline.

The thin config files (stage1.py, stage2.py, stage3.py, cooperative.py) are
assembled from these functions, so that each setting lives in one place.
Thesis settings (chapter 4): 640x512 (HxW) images in [0, 1], Adam(0.9,
0.999, 1e-8) lr 1e-4, 50 epochs, early stopping on validation (patience 10
evaluations), the best checkpoint (validation loss) feeds the next stage.
The thesis names no learning-rate schedule; the authors' code also reduces
the learning rate on plateaus, which `plateau_patience` (0 = off, the
default) turns on for a stage, e.g.
`--config.stages.stage2.plateau_patience=5`. `demo` shrinks everything to
CPU size: 128x96 images, 360 phantom studies (216 train, 24 val, 120 test),
a small DenseNet (`densenet_small`, the same in every stage and in the
DenseNet baseline), tiny UNets, 8 epochs for every run and no early
stopping, so every comparison is between runs of equal length.

Augmentation in training is ours: chapter 4 names none, so every stage uses
Study A's list (Gaussian noise, rotation up to 10 degrees, brightness and
contrast; gaze maps follow the rotation) without the horizontal flip, as the
heart's side is diagnostic for CHF. `--config.augment.noise_std=0` (and
`rotate_deg`, `brightness`, `contrast`) switch each part off.
"""
import ml_collections

from cxr_jax import config_base
from cxr_jax.data import egd

PRESETS = dict(demo=False, res='640x512', stage3='thesis')


def args(arg):
  return config_base.parse_arg(arg, **PRESETS)


def data(a) -> ml_collections.ConfigDict:
  d = egd.default_config()
  h, w = (int(v) for v in a.res.split('x'))
  d.image_size = (h, w)
  d.phantom_num = 600  # used only when data.root is empty (no real data)
  if a.demo:
    d.image_size = (128, 96)
    d.phantom_num = 360
    d.phantom_size = 256
    d.num_test = 120
  return d


def _name(base: str, a) -> str:
  if not a.demo:
    return base
  # The DenseNet must learn the classes in the demo for its features to mean
  # anything in stage 2; 'tiny' (a test-sized net) does not.
  if base.startswith('densenet'):
    return 'densenet_small'
  return 'cooperative_small' if base == 'cooperative' else f'{base}_tiny'


def _base(a, model: str, loss: str, *, evals=('classification',)):
  c = config_base.train_config()
  c.data = data(a)
  c.model = ml_collections.ConfigDict(dict(
      name=_name(model, a), num_classes=3, in_chans=1, dtype='float32'))
  c.loss = ml_collections.ConfigDict(dict(name=loss))
  c.optim.lr = 1e-4
  c.total_epochs = 50.0
  c.batch_size = 8
  c.eval_batch_size = 16
  c.augment.rotate_deg = 10.0
  c.augment.hflip = False  # the heart's side is diagnostic for CHF
  c.evals.val = config_base.evaluator('loss', 'val')
  if 'classification' in evals:
    c.evals.test_cls = config_base.evaluator(
        'classification', 'test', every_steps=-1, final=True,
        task='multiclass')
  if 'saliency' in evals:
    c.evals.test_sal = config_base.evaluator('saliency', 'test',
                                             every_steps=-1, final=True)
  c.early_stopping_patience = 10
  c.plateau_patience = 0  # the thesis: early stopping only
  if a.demo:
    c.batch_size = 8
    c.num_workers = 0
    c.total_epochs = 8.0
    c.optim.lr = 1e-3
    c.log_every_steps = 20
    c.progress_every_s = 15.0
    c.early_stopping_patience = 0
  return c


def stage1_contrastive(a):
  """DenseNet-201, triplet loss (margin 1, all valid triplets in a batch)."""
  c = _base(a, 'densenet201', 'triplet', evals=())
  c.loss.margin = 1.0
  c.loss.embedding_key = 'pre_logits'
  c.batch_size = 16  # enough same/other-class pairs for triplets
  return c


def stage1_finetune(a, from_stage='stage1_contrastive'):
  """DenseNet-201 3-class cross-entropy from the contrastive weights."""
  c = _base(a, 'densenet201', 'ce')
  c.init.from_stage = from_stage
  return c


def _coop(a, loss, evals):
  c = _base(a, 'cooperative', loss, evals=evals)
  c.model.densenet_feature = 'denseblock4'  # the authors' code; thesis text:
  # 'denseblock3' ("all layers before the last dense block")
  # The authors' plain concatenation; True = our zero-initialised gate.
  c.model.inject_gate = False
  return c


def stage2(a, from_stage='stage1_finetune'):
  """Res_SE-UNet on gaze maps (KL) with the DenseNet frozen (eval mode)."""
  c = _coop(a, 'kl_saliency', evals=('saliency',))
  c.init.from_stage = from_stage
  c.init.rules = (('densenet/(.*)', r'\1'),)
  c.init.dont_load = ('unet/.*', 'fusion/.*')
  c.schedule = (('unet/.*', {}), ('.*', None))
  return c


def stage3(a, from_stage='stage2'):
  """Only the fusion classifier trains (thesis), or joint (authors' code)."""
  if a.stage3 not in ('thesis', 'joint'):
    raise ValueError(f"Config preset stage3={a.stage3!r}: use 'thesis' or "
                     "'joint'.")
  if a.stage3 == 'thesis':
    c = _coop(a, 'ce', evals=('classification', 'saliency'))
    c.schedule = (('fusion/.*', {}), ('.*', None))
  else:
    c = _coop(a, 'cooperative_joint', evals=('classification', 'saliency'))
    c.loss.saliency_weight = 1.0
    c.schedule = (('fusion/.*', {}), ('unet/.*', {}), ('.*', None))
  c.init.from_stage = from_stage
  return c


def mtunet(a):
  c = _base(a, 'mtunet', 'uncertainty_multitask',
            evals=('classification', 'saliency'))
  return c


def saliency_only(a, model):
  c = _base(a, model, 'kl_saliency', evals=('saliency',))
  c.model.num_classes = None
  return c


def classifier(a, model):
  c = _base(a, model, 'ce')
  if model == 'gazegnn':
    c.model_inputs = ('gaze',)
  return c


STAGES = ('stage1_contrastive', 'stage1_finetune', 'stage2', 'stage3')
BASELINES = ('mtunet', 'unet_s', 'res_se_unet', 'densenet201',
             'inception_resnet_v2', 'gazegnn')


def all_stages(a) -> dict:
  return {
      'stage1_contrastive': stage1_contrastive(a),
      'stage1_finetune': stage1_finetune(a),
      'stage2': stage2(a),
      'stage3': stage3(a),
      'mtunet': mtunet(a),
      'unet_s': saliency_only(a, 'unet'),
      'res_se_unet': saliency_only(a, 'res_se_unet'),
      'densenet201': classifier(a, 'densenet201'),
      'inception_resnet_v2': classifier(a, 'inception_resnet_v2'),
      'gazegnn': classifier(a, 'gazegnn'),
  }


def sequence(a, names) -> ml_collections.ConfigDict:
  c = config_base.sequence_config()
  c.data = data(a)
  stages = all_stages(a)
  c.sequence = tuple(names)
  c.stages = ml_collections.ConfigDict({n: stages[n] for n in names})
  return c
