r"""MobileNetV2 (width 1.0) on ImageNet-1k with its own recipe.

torchvision-style recipe: SGD momentum 0.9 (no Nesterov), lr 0.045 x batch/256
with cosine decay over 300 epochs (torchvision used step decay 0.98/epoch;
cosine is the common modern choice), weight decay 4e-5, label smoothing 0.1,
5 warmup epochs, bfloat16 compute.

Command:
  python -m jaxres.main --config=configs/mobilenetv2_imagenet.py --workdir=runs/mnv2

Hardware: 8 GPUs or a TPU v3-8 with batch 1024. Target: 71.88% top-1
(torchvision v1 weights); not yet reproduced with jaxres.
"""
from configs import common


def get_config():
  c = common.classification_config()
  c.model = 'mobilenet_v2'
  c.model_kwargs.width_mult = 1.0
  c.model_kwargs.output_stride = 32
  c.dtype = 'bfloat16'
  c.learning_rate = 0.045
  c.nesterov = False
  c.weight_decay = 4e-5
  c.num_train_epochs = 300.0
  c.warmup_epochs = 5.0
  c.checkpoint_every_epochs = 1.0
  c.eval_every_epochs = 1.0
  c.lock()
  return c
