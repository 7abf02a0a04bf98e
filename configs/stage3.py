r"""Study B stage 3: only the feature-fusion classifier trains.

  python main.py --config=configs/stage3.py --workdir=workdirs/stage3 \
      [--config.init.path=workdirs/stage2]

Preset `stage3=joint` is the authors' released variant (classifier and
saliency losses together, UNet trainable). Presets: demo, res=HxW.
"""
from configs import study_b


def get_config(arg=None):
  c = study_b.stage3(study_b.args(arg), from_stage='')
  c.init.path = 'workdirs/stage2'
  return c
