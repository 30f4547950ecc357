r"""DeepLabV3+ on ResNet-50 (output stride 8), PASCAL VOC 2012 + SBD, 512x512.

mmsegmentation's deeplabv3plus_r50-d8_4xb4-{20k,40k}_voc12aug-512x512 recipe
(see segmentation_common.mmseg_deeplabv3plus_config): batch 16 (4 GPUs x 4),
SGD lr 0.01, weight decay 5e-4, poly decay over 20k or 40k steps, random
scale 0.5-2.0, 512x512 crops, flips, auxiliary loss 0.4, whole-image
inference. `:20k` (the default) or `:40k` picks the schedule.

Data: a VOC-style root (JPEGImages/, SegmentationClassAug/ with the SBD
masks, ImageSets/Segmentation/{train_aug,val}.txt); evaluated on the 1,449
val images at full resolution. Start from ImageNet ResNet-50 weights.

Command:
  python -m jaxres.main --config=configs/deeplabv3plus_resnet50_voc.py:20k \
      --workdir=runs/dlv3p_r50_voc_20k --config.data_dir=/data/VOCdevkit/VOC2012 \
      --config.init_from=/path/resnet50-0676ba61.pth --config.init_backbone_only=True

Hardware: mmseg used 4 V100s (7.6 GB each at batch 4); sized here for one
GPU with >= 40 GB or 8 smaller ones. Not yet timed.
Expected result: mmseg's published VOC 2012 val mIoU, single scale: 75.93
(20k) and 76.81 (40k); 77.50 / 77.57 with multi-scale + flip. jaxres has not
reproduced it: no VOC run has been made. Differences from mmseg that may cost
points: torchvision ResNet (7x7 stem, v1.5) instead of ResNetV1c (three 3x3
stem convs, open-mmlab weights); a 256-channel head with plain 3x3 convs
(mmseg: 512 channels, depthwise-separable; the parameter counts are close)
and a 1x1 ASPP fusion (mmseg: 3x3); scale jitter relative to the original
image (mmseg rescales the short side to 512 x [0.5, 2]) and evaluation at the
original size (mmseg: short side 512); no PhotoMetricDistortion or
cat_max_ratio crop; poly decays to 0 (mmseg: 1e-4).
"""
from configs import segmentation_common

ARGS = ['20k', '40k']
SCHEDULES = {'20k': (20_000, 2_000), '40k': (40_000, 4_000)}


def get_config(schedule: str = '20k', depth: int = 50):
  c = segmentation_common.mmseg_deeplabv3plus_config(depth)
  segmentation_common.voc_data(c)
  segmentation_common.mmseg_schedule(c, schedule, SCHEDULES)
  c.lock()
  return c
