r"""DeepLabV3+ on ResNet-101 (output stride 8), ADE20K (150 classes), 512x512.

mmsegmentation's deeplabv3plus_r101-d8_4xb4-{80k,160k}_ade20k-512x512: the
ResNet-50 recipe of deeplabv3plus_resnet50_ade20k.py (read its docstring for
the data and the differences from mmseg) with a ResNet-101 backbone. `:80k`
(the default) or `:160k` picks the schedule.

Command:
  python -m jaxres.main --config=configs/deeplabv3plus_resnet101_ade20k.py:160k \
      --workdir=runs/dlv3p_r101_ade20k_160k --config.data_dir=/data/ADEChallengeData2016 \
      --config.init_from=/path/resnet101-63fe2227.pth --config.init_backbone_only=True

Hardware: mmseg used 4 V100s (14.1 GB each at batch 4); sized here for one GPU
with >= 80 GB or 8 smaller ones. Not yet timed.
Expected result: mmseg's published ADE20K val mIoU, single scale: 44.60
(80k) and 45.47 (160k); 46.06 / 46.35 with multi-scale + flip
(configs/deeplabv3plus/README.md). jaxres has not reproduced it: no ADE20K run
has been made.
"""
from configs import deeplabv3plus_resnet50_ade20k

ARGS = deeplabv3plus_resnet50_ade20k.ARGS


def get_config(schedule: str = '80k'):
  return deeplabv3plus_resnet50_ade20k.get_config(schedule, depth=101)
