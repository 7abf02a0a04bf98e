r"""Study B stage 2: the Res_SE-UNet learns gaze maps; DenseNet-201 frozen.

  python main.py --config=configs/stage2.py --workdir=workdirs/stage2 \
      [--config.init.path=workdirs/stage1/finetune]

`init.path` is stage 1's workdir (its best checkpoint, chosen on
validation); the DenseNet is frozen by the schedule and runs in inference
mode. Presets: demo, res=HxW.
"""
from configs import study_b


def get_config(arg=None):
  c = study_b.stage2(study_b.args(arg), from_stage='')
  c.init.path = 'workdirs/stage1/finetune'
  return c
