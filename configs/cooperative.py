r"""Study B end to end: three-stage cooperative learning, baselines, report.

  python main.py --config=configs/cooperative.py:demo --workdir=workdirs/coop

Stages (each a normal training run in workdir/<name>, resumable):
stage1_contrastive -> stage1_finetune -> stage2 -> stage3, then the baselines
MT-UNet, UNet_S, Res_SE-UNet, DenseNet-201 (no contrastive pretraining),
Inception-ResNet-v2 and GazeGNN; then the report (Tables 4.1, 4.2, t-tests,
Fig 4.2 grid, Grad-CAM vs gaze) in workdir/report. `--config.sequence=...`
runs a subset. Presets: demo, res=HxW, stage3=thesis|joint.
"""
from configs import study_b


def get_config(arg=None):
  c = study_b.sequence(study_b.args(arg), study_b.STAGES + study_b.BASELINES)
  c.report = 'cooperative'
  c.bootstrap = 1000  # replicates of the report's bootstrap 95% CIs
  return c


def sweep(add):
  """The thesis's ablations as overrides of this config (run by launch/)."""
  # With vs without contrastive pretraining (DenseNet-201 classification):
  add(name='pretraining_ablation',
      sequence=('stage1_contrastive', 'stage1_finetune', 'densenet201'))
  # Res_SE-UNet vs UNet_S and with vs without the DenseNet encoder (saliency):
  add(name='saliency_ablation',
      sequence=('stage1_contrastive', 'stage1_finetune', 'stage2', 'unet_s',
                'res_se_unet'))
  # The full model vs DenseNet-201-CL (classification):
  add(name='classification_ablation',
      sequence=('stage1_contrastive', 'stage1_finetune', 'stage2', 'stage3',
                'densenet201'))
  # Training-run variance: the whole study once per seed (initialisation,
  # data order, augmentation, dropout; the data and split stay fixed), then
  # `python -m cxr_jax.studies.seeds ROOT/seed0 ROOT/seed1 ROOT/seed2`.
  for seed in range(3):
    add(name=f'seed{seed}', seed=seed)
  # Which DenseNet feature enters the decoder (authors' code vs thesis text):
  add(name='densenet_feature_denseblock3',
      **{'stages.stage2.model.densenet_feature': 'denseblock3',
         'stages.stage3.model.densenet_feature': 'denseblock3'})
