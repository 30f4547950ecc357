r"""DeepLabV3+ on ResNet-101 (output stride 8), PASCAL VOC 2012 + SBD, 512x512.

mmsegmentation's deeplabv3plus_r101-d8_4xb4-{20k,40k}_voc12aug-512x512: the
ResNet-50 recipe of deeplabv3plus_resnet50_voc.py (read its docstring for the
data and the differences from mmseg) with a ResNet-101 backbone. `:20k` (the
default) or `:40k` picks the schedule.

Command:
  python -m jaxres.main --config=configs/deeplabv3plus_resnet101_voc.py:40k \
      --workdir=runs/dlv3p_r101_voc_40k --config.data_dir=/data/VOCdevkit/VOC2012 \
      --config.init_from=/path/resnet101-63fe2227.pth --config.init_backbone_only=True

Hardware: mmseg used 4 V100s (11 GB each at batch 4); sized here for one GPU
with >= 80 GB or 8 smaller ones. Not yet timed.
Expected result: mmseg's published VOC 2012 val mIoU, single scale: 77.22
(20k) and 78.62 (40k); 78.59 / 79.53 with multi-scale + flip. jaxres has not
reproduced it: no VOC run has been made.
"""
from configs import deeplabv3plus_resnet50_voc

ARGS = deeplabv3plus_resnet50_voc.ARGS


def get_config(schedule: str = '20k'):
  return deeplabv3plus_resnet50_voc.get_config(schedule, depth=101)
