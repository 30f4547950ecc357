r"""ResNet-101 on ImageNet-1k with the ResNet-50 recipe (see resnet50_imagenet.py).

Command:
  python -m jaxres.main --config=configs/resnet101_imagenet.py --workdir=runs/r101

Hardware: 8 GPUs or a TPU v3-8 / v4-8 with batch 1024. Target: torchvision's
published top-1 for ResNet-101, see README (not yet reproduced with jaxres).
"""
from configs import resnet50_imagenet


def get_config():
  c = resnet50_imagenet.get_config()
  c.unlock()
  c.model = 'resnet101'
  c.lock()
  return c
