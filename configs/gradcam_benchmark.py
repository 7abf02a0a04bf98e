r"""Study A end to end: nine classifiers on SIIM, then the Grad-CAM benchmark.

  python main.py --config=configs/gradcam_benchmark.py:demo --workdir=/tmp/a
  python main.py --config=configs/gradcam_benchmark.py \
      --config.data.root=/data/siim --config.init_dir=/weights \
      --workdir=workdirs/gradcam_benchmark

A `sequence` job: one stage per model (VGG16/19, ResNet18/34/50/101,
ViT-S/B/L-16), each stage the `configs/siim_classifier.py` config of that
model (thesis optimiser per family: Adam 1e-4 for 50 epochs for the CNNs,
SGD 1e-4 for 300 epochs for the ViTs), trained in `workdir/<model>`; then the
report `cxr_jax.studies.gradcam_benchmark:report` writes Tables 3.1/3.2, the
localisation table, ANOVA + Tukey HSD, Fig 3.1/3.2 and `report.md` to
`workdir/report/`. `--config.sequence=resnet18,vit_b16` runs a subset.

`init_dir`: a folder holding converted ImageNet weights as
`<init_dir>/<model>/` (written by `python -m cxr_jax.convert`); every stage's
`init.path` follows it lazily (a field reference, so `--config.init_dir=...`
reaches every stage). Empty (the default) trains every model FROM SCRATCH,
unlike the thesis (ImageNet-pretrained); the report says which was used.

`cam` configures the report (not training): `method` of the per-model maps,
`targets` = 'label' (the thesis explains the true class; every scored image
has a mask, so that is the pneumothorax class) or 'pred' (the predicted
class), the EHR variant ('thesis' = equidistant thresholds, area ratio;
'inputiba' = the reference code's quantile thresholds), the methods compared
on `compare_model` (Fig "CAM methods"), the number of patients in the figure
grids, the CAM batch size, bootstrap replicates of the 95% CIs and the
Quantus top-k fraction (k = 1000 of 224x224 pixels ~ 0.02).

Presets: `demo` (tiny variants, 64x64 phantom of 480 cases, 12 epochs; the
stage names stay the thesis's so the demo runs all nine, each mapped to its
family's tiny network), `init_dir=PATH`.
"""
from __future__ import annotations

import os

import ml_collections

from cxr_jax import config_base
from configs import siim_classifier

MODELS = ('vgg16', 'vgg19', 'resnet18', 'resnet34', 'resnet50', 'resnet101',
          'vit_s16', 'vit_b16', 'vit_l16')
CAM_METHODS = ('gradcam', 'hirescam', 'gradcam++', 'xgradcam', 'layercam',
               'scorecam', 'eigencam')


def _stage_init_path(model: str):
  """`init_dir` -> `init_dir/model`, '' -> '' (applied lazily)."""
  def fn(init_dir: str) -> str:
    return os.path.join(init_dir, model) if init_dir else ''
  return fn


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = config_base.parse_arg(arg, demo=False, init_dir='')
  c = config_base.sequence_config()
  preset = 'demo' if a.demo else ''
  first = siim_classifier.get_config(f'model={MODELS[0]},{preset}')
  c.data = first.data  # shared by every stage (jobs.stage_config copies it)
  c.seed = first.seed
  c.init_dir = a.init_dir
  init_ref = c.get_ref('init_dir')
  c.sequence = MODELS
  stages = {}
  for name in MODELS:
    s = siim_classifier.get_config(f'model={name},{preset}')
    # Lazy: `--config.init_dir=...` updates every stage. (A public
    # FieldReference op cannot express "'' stays ''", hence `_apply_op`.)
    s.init.path = init_ref._apply_op(_stage_init_path(name))  # pylint: disable=protected-access
    if a.demo:
      s.total_epochs = 12.0
      s.progress_every_s = 60.0
      if siim_classifier.family(name) == 'vit':
        s.model.img_size = 64  # = data.image_size; change both together
    stages[name] = s
  c.stages = ml_collections.ConfigDict(stages)
  c.report = 'gradcam_benchmark'
  c.cam = ml_collections.ConfigDict(dict(
      method='gradcam', targets='label', ehr_variant='thesis',
      ehr_thresholds=101, compare_methods=CAM_METHODS,
      compare_model='resnet50', grid_patients=4, batch_size=16,
      bootstrap=1000, top_k_fraction=0.02))
  if a.demo:
    # siim_classifier's demo phantom (112 training images) is too small for
    # the tiny models to learn pneumothorax in a few epochs (val accuracy
    # stays at chance); 320 training images and 12 epochs reach test AUC
    # ~0.7 for resnet_tiny. 120 test images give ~55 masked ones per model.
    c.data.phantom_num = 480
    c.data.num_per_class = 240
    c.data.split_sizes = (320, 40, 120)
    c.cam.batch_size = 8
  return c


def sweep(add):
  """One point per model (each its own one-stage sequence and report)."""
  for name in MODELS:
    add(name=name, sequence=(name,))
