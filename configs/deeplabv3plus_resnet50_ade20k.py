r"""DeepLabV3+ on ResNet-50 (output stride 8), ADE20K (150 classes), 512x512.

mmsegmentation's deeplabv3plus_r50-d8_4xb4-{80k,160k}_ade20k-512x512 recipe
(see segmentation_common.mmseg_deeplabv3plus_config): batch 16 (4 GPUs x 4),
SGD lr 0.01, weight decay 5e-4, poly decay over 80k or 160k steps, random
scale 0.5-2.0, 512x512 crops, flips, auxiliary loss 0.4, whole-image
inference. Labels are reduced as mmseg does (0 "other" -> ignore, k -> k-1).
`:80k` (the default) or `:160k` picks the schedule.

Data: the released ADEChallengeData2016 folder (images/{training,validation}
/*.jpg, annotations/{training,validation}/*.png; 20,210 / 2,000 images).
Evaluated on the validation images at full resolution. Start from ImageNet
ResNet-50 weights.

Command:
  python -m jaxres.main --config=configs/deeplabv3plus_resnet50_ade20k.py:80k \
      --workdir=runs/dlv3p_r50_ade20k_80k --config.data_dir=/data/ADEChallengeData2016 \
      --config.init_from=/path/resnet50-0676ba61.pth --config.init_backbone_only=True

Hardware: mmseg used 4 V100s (10.6 GB each at batch 4); sized here for one
GPU with >= 80 GB or 8 smaller ones. Not yet timed.
Expected result: mmseg's published ADE20K val mIoU, single scale: 42.72
(80k) and 43.95 (160k); 43.75 / 44.93 with multi-scale + flip. jaxres has not
reproduced it: no ADE20K run has been made. Differences from mmseg as listed
in deeplabv3plus_resnet50_voc.py (mmseg rescales ADE20K images to short side
512 for training jitter and testing; here scales are relative to the stored
image, evaluated at its size).
"""
from configs import segmentation_common

ARGS = ['80k', '160k']
SCHEDULES = {'80k': (80_000, 8_000), '160k': (160_000, 16_000)}


def get_config(schedule: str = '80k', depth: int = 50):
  c = segmentation_common.mmseg_deeplabv3plus_config(depth)
  c.dataset = 'ade20k'
  c.num_classes = 150
  c.reduce_zero_label = True
  segmentation_common.mmseg_schedule(c, schedule, SCHEDULES)
  c.lock()
  return c
