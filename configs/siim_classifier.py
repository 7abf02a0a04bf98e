r"""Study A, one model: fine-tune a classifier for pneumothorax vs healthy.

  python main.py --config=configs/siim_classifier.py:model=resnet50 \
      --config.data.root=/data/siim --config.init.path=/weights/resnet50

Thesis settings (SPEC, Study A): CLAHE + z-score + 224x224; VGG/ResNet Adam
1e-4 for 50 epochs; ViT SGD 1e-4 for 300 epochs (momentum 0.9 is our reading:
the thesis gives none). A fixed-length run at a constant learning rate, as
the thesis describes it (Study B's stages, unlike these, stop early): no
early stopping and no reduce-on-plateau by default (`early_stopping_patience`
/ `plateau_patience` > 0 turn them on); the checkpoint with the lowest
val/loss is the one tested and explained. `init.path` = a folder written by
`python -m cxr_jax.convert` (ImageNet weights); the head is re-initialised for
2 classes and the first conv summed to 1 channel. Presets: `demo` (tiny model,
small phantom, 64 px, a few epochs; sized for a CPU), `model=NAME`,
`model_parallel=N` (parameters sharded N ways, below).

ViT-L with model parallelism: `model_parallel=N` makes the mesh
(('data', -1), ('model', N)) and shards the parameters and the optimizer state
over 'model': Megatron-style in the ViT blocks (attention by head, MLP fc1 by
columns, fc2 by rows), fsdp (largest divisible dimension) for the rest and for
other families. The batch is still split over 'data' (devices / N groups).

  python main.py \
      --config=configs/siim_classifier.py:model=vit_l16,model_parallel=4 \
      --config.data.root=/data/siim --config.init.path=/weights/vit_l16
  # the same with explicit fields (any config, any rules):
  python main.py --config=configs/siim_classifier.py:model=vit_l16 \
      --config.mesh="(('data', -1), ('model', 4))" \
      --config.sharding_rules=megatron_vit --config.sharding_rules=fsdp ...
"""
from cxr_jax import config_base
from cxr_jax.data import siim

# Parameter-name pattern of the classifier head (VGG, ResNet and ViT all name
# it 'head'), re-initialised when loading ImageNet weights for 2 classes.
HEAD = 'head/.*'


def family(model: str) -> str:
  return model.split('_')[0].rstrip('0123456789')


def get_config(arg=None):
  a = config_base.parse_arg(arg, demo=False, model='resnet50',
                            model_parallel=0)
  c = config_base.train_config()
  c.data = siim.default_config()
  c.model.name = a.model
  c.model.num_classes = 2
  c.model.in_chans = 1
  fam = family(a.model)
  c.init.dont_load = (HEAD,)
  c.optim.lr = 1e-4
  if fam == 'vgg':
    # Grad-CAM's layer: 'relu' = the ReLU after the last conv (relu5_3, the
    # original Grad-CAM code's layer); 'conv' = that conv's output.
    c.model.cam_layer = 'relu'
  if fam == 'vit':
    c.optim.name = 'sgd'
    c.optim.momentum = 0.9
    c.total_epochs = 300.0
  else:
    c.optim.name = 'adam'
    c.total_epochs = 50.0
  c.evals.val = config_base.evaluator('loss', 'val')
  c.evals.test = config_base.evaluator('classification', 'test',
                                       every_steps=-1, final=True,
                                       task='binary')
  c.select_metric = 'val/loss'
  c.early_stopping_patience = 0
  c.plateau_patience = 0
  if a.model_parallel:
    c.mesh = (('data', -1), ('model', a.model_parallel))
    c.sharding_rules = ('megatron_vit', 'fsdp') if fam == 'vit' else ('fsdp',)
  if a.demo:
    c.model.name = a.model if a.model.endswith('tiny') else (
        f'{fam}_tiny' if fam in ('vgg', 'resnet', 'vit') else a.model)
    c.data.image_size = (64, 64)
    c.data.phantom_num = 160
    c.data.phantom_size = 128
    c.data.num_per_class = 80
    c.data.split_sizes = (112, 24, 24)
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_workers = 0
    c.total_epochs = 4.0
    c.optim.lr = 1e-3
    c.log_every_steps = 5
    c.progress_every_s = 10.0
  return c
