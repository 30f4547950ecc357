r"""ResNet-18/34/50/101/152 (v1.5) on ImageNet-1k: the standard 90-epoch recipe.

SGD with Nesterov momentum 0.9, lr 0.1 x batch/256, 5 warmup epochs then cosine
decay, weight decay 1e-4 on kernels, label smoothing 0.1, bfloat16 compute with
float32 parameters, random-resized crop 224 + flip, eval resize 256 / crop 224.
The argument picks the depth (default 50):

Command (ImageNet prepared in the TFDS data dir, see README):
  python -m jaxres.main --config=configs/resnet_imagenet.py:resnet101 --workdir=runs/r101
  python -m jaxres.main --config=configs/resnet50_imagenet.py --workdir=runs/r50

Hardware and expected result: 8 GPUs or a TPU v3-8 / v4-8 with batch 1024.
Targets: torchvision's published top-1 69.76 / 73.31 / 76.13 / 77.37 / 78.31
for ResNet-18/34/50/101/152. Reference results for this recipe on ResNet-50:
76.3-76.5% top-1 (flax examples/imagenet, ~100 epochs, TPU v3-32 2.1 h /
8xV100). Not yet reproduced with jaxres: no ImageNet run has been made on this
codebase so far.
"""
from configs import common

ARGS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')


def get_config(arg: str = 'resnet50'):
  if arg not in ARGS:
    raise ValueError(f'configs/resnet_imagenet.py:{arg}: choose one of '
                     f'{", ".join(ARGS)}.')
  c = common.classification_config()
  c.model = arg
  c.model_kwargs.output_stride = 32
  c.dtype = 'bfloat16'
  c.batch_size = 1024
  c.eval_batch_size = 1024
  c.num_train_epochs = 90.0
  c.warmup_epochs = 5.0
  c.checkpoint_every_epochs = 1.0
  c.eval_every_epochs = 1.0
  c.lock()
  return c
