r"""ResNet-50 v1.5 on ImageNet-1k: the 90-epoch recipe of resnet_imagenet.py.

Kept under this name because it is the command most researchers start from;
the recipe, hardware and targets are in configs/resnet_imagenet.py.

Command:
  python -m jaxres.main --config=configs/resnet50_imagenet.py --workdir=runs/r50

Expected result: 76.13% top-1 (torchvision's ResNet-50 v1 weights); not yet
reproduced with jaxres.
"""
from configs import resnet_imagenet


def get_config():
  return resnet_imagenet.get_config('resnet50')
