r"""Study B stage 1: DenseNet-201 contrastive pretraining, then fine-tuning.

  python main.py --config=configs/stage1.py --workdir=workdirs/stage1

Runs `contrastive` (triplet loss, margin 1.0) then `finetune` (3-class
cross-entropy) in `workdir/{contrastive,finetune}`; stage 2 initialises from
`workdirs/stage1/finetune` by default. Presets: demo, res=HxW.
"""
from configs import study_b


def get_config(arg=None):
  a = study_b.args(arg)
  c = study_b.sequence(a, ())
  c.sequence = ('contrastive', 'finetune')
  c.stages.contrastive = study_b.stage1_contrastive(a)
  c.stages.finetune = study_b.stage1_finetune(a, from_stage='contrastive')
  return c
