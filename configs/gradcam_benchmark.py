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
`<init_dir>/<model>/` (written by `python -m cxr_jax.convert`); the sequence
job starts every stage from its model's folder (`jobs.stage_config`), so
`--config.init_dir=...` reaches every stage. Empty (the default) trains every
model FROM SCRATCH, unlike the thesis (ImageNet-pretrained); the report says
which was used.

`cam` configures the report (not training): `method` of the per-model maps,
`targets` = 'label' (the thesis explains the true class; every scored image
has a mask, so that is the pneumothorax class) or 'pred' (the predicted
class), the EHR variant ('thesis' = equidistant thresholds, area ratio;
'inputiba' = the reference code's quantile thresholds), the methods compared
on `compare_model` (Fig "CAM methods"), the number of patients in the figure
grids, the CAM batch size, bootstrap replicates of the 95% CIs and the
Quantus top-k fraction (k = 1000 of 224x224 pixels ~ 0.02).

Presets: `demo` (one stage per family: vgg16, resnet50, vit_b16, each mapped
to its family's tiny network; a 128x128 phantom, see `_demo`; sized for a
CPU; `--config.sequence=` with any of the nine names still works, but stages
of one family then train the same network), `init_dir=PATH`.
"""
from __future__ import annotations

import ml_collections

from cxr_jax import config_base
from configs import siim_classifier

MODELS = ('vgg16', 'vgg19', 'resnet18', 'resnet34', 'resnet50', 'resnet101',
          'vit_s16', 'vit_b16', 'vit_l16')
CAM_METHODS = ('gradcam', 'hirescam', 'gradcam++', 'xgradcam', 'layercam',
               'scorecam', 'eigencam')


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = config_base.parse_arg(arg, demo=False, init_dir='')
  c = config_base.sequence_config()
  preset = 'demo' if a.demo else ''
  first = siim_classifier.get_config(f'model={MODELS[0]},{preset}')
  c.data = first.data  # shared by every stage (jobs.stage_config copies it)
  c.seed = first.seed
  c.init_dir = a.init_dir
  c.sequence = MODELS
  stages = {}
  for name in MODELS:
    s = siim_classifier.get_config(f'model={name},{preset}')
    if a.demo:
      _demo_stage(s, name)
    stages[name] = s
  c.stages = ml_collections.ConfigDict(stages)
  c.report = 'gradcam_benchmark'
  c.cam = ml_collections.ConfigDict(dict(
      method='gradcam', targets='label', ehr_variant='thesis',
      ehr_thresholds=101, compare_methods=CAM_METHODS,
      compare_model='resnet50', grid_patients=4, batch_size=16,
      bootstrap=1000, top_k_fraction=0.02))
  if a.demo:
    _demo(c)
  return c


# Demo: one stage per family (the three tiny networks are distinct; nine
# stages would train each of them three times on the same data and seed).
DEMO_MODELS = ('vgg16', 'resnet50', 'vit_b16')
DEMO_SIZE = 128


def _demo_stage(s: ml_collections.ConfigDict, name: str) -> None:
  """Demo overrides of one stage (on top of siim_classifier's `demo`).

  At 128 px the Grad-CAM grids are 8x8 for vgg_tiny (its last conv, before
  the 4th max-pool), 4x4 for resnet_tiny (stride 32) and 8x8 for vit_tiny
  (patch 16): fine enough for peripheral pneumothoraces, unlike 64 px (2x2
  for resnet_tiny, which leaves Diff_GradCAM ~0).
  """
  fam = siim_classifier.family(name)
  s.batch_size = 32
  s.progress_every_s = 60.0
  s.total_epochs = 15.0
  # Fixed-length runs like the thesis's (siim_classifier's default): from
  # scratch, vgg_tiny and vit_tiny sit at val/loss 0.693 for several epochs
  # before they take off, which reduce-on-plateau and early stopping
  # (patience 5 / 10 evaluations) would cut short.
  s.optim.lr = 1e-3  # Adam (siim_classifier's demo)
  if fam == 'vit':
    s.model.img_size = DEMO_SIZE  # = data.image_size; change both together
    s.model.patch_size = DEMO_SIZE // 8
    # From scratch on 400 images, SGD + momentum (the thesis's optimiser, lr
    # 3e-2 to 0.1) keeps vit_tiny at chance for 10-15 epochs; Adam 1e-3
    # reaches test AUC ~0.6-0.7 in 40-60 epochs (an epoch of vit_tiny costs
    # a fraction of a CNN's).
    s.optim.name = 'adam'
    s.optim.momentum = 0.0
    s.total_epochs = 40.0
  elif fam == 'vgg':
    # No BatchNorm and three N(0, 0.01) classifier layers: the logits start
    # ~1e-3 and training sits at a saddle whose length scales with 1 / lr.
    # With dropout 0.5 on 64 hidden units Adam 1e-3 stays at chance for 12
    # epochs (and 2e-3 without dropout for 11); 5e-3 without dropout takes
    # off after ~5 epochs. At 15 epochs (test AUC 0.86) its Grad-CAM is not
    # yet on the mask (Diff_GradCAM -0.01, HiResCAM +0.10); 25 epochs give
    # AUC 0.98 and Diff_GradCAM ~0.05 (HiResCAM ~0.2: the flatten-FC head's
    # position-specific gradients partly cancel in Grad-CAM's channel means).
    s.optim.lr = 5e-3
    s.model.dropout = 0.0
    s.total_epochs = 25.0


def _demo(c: ml_collections.ConfigDict) -> None:
  """Demo data and report settings (stages: `_demo_stage`)."""
  c.sequence = DEMO_MODELS
  c.data.image_size = (DEMO_SIZE, DEMO_SIZE)
  c.data.phantom_size = DEMO_SIZE  # CLAHE at the stored size: no resize cost
  # 400 training images; 160 test images give ~80 masked ones per model.
  c.data.phantom_num = 640
  c.data.num_per_class = 320
  c.data.split_sizes = (400, 80, 160)
  c.cam.batch_size = 32


def sweep(add):
  """One point per model (each its own one-stage sequence and report), and
  the whole study once per training seed (`seed0`-`seed2`: initialisation,
  data order, augmentation; the data and split stay fixed), to pool with
  `python -m cxr_jax.studies.seeds ROOT/seed0 ROOT/seed1 ROOT/seed2`."""
  for name in MODELS:
    add(name=name, sequence=(name,))
  for seed in range(3):
    add(name=f'seed{seed}', seed=seed)
