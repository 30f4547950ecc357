r"""DeepLabV3+ on ResNet-101 (output stride 8), Cityscapes fine, 512x1024 crops.

mmsegmentation's deeplabv3plus_r101-d8_4xb2-80k_cityscapes-512x1024 recipe
(see segmentation_common.mmseg_deeplabv3plus_config): batch 8 (4 GPUs x 2),
SGD lr 0.01, weight decay 5e-4, poly decay over 80k steps, random scale
0.5-2.0, 512x1024 crops, flips, auxiliary loss 0.4.

Inference: sliding 512x1024 windows with stride 341x682 (3 x 3 windows on a
1024x2048 image, overlapping logits averaged; see jaxres/seg_inference.py), so
evaluation holds one batch of crop-sized windows on a device instead of the
whole image. mmseg's published 512x1024 numbers were measured on the whole
image in one pass (test_cfg mode='whole'; only its 769x769 configs slide, 769
windows with stride 513): --config.inference=whole evaluates as they did.

Data: TFDS `cityscapes/semantic_segmentation` (manual download; labelIds are
mapped to the 19 train ids with 255 ignore). Start from ImageNet ResNet-101
weights. The same recipe on ResNet-50: --config.model=deeplabv3plus_resnet50.

Command:
  python -m jaxres.main --config=configs/deeplabv3plus_resnet101_cityscapes.py \
      --workdir=runs/dlv3p_r101_cityscapes --config.data_dir=/data/tfds \
      --config.init_from=/path/resnet101-63fe2227.pth --config.init_backbone_only=True

Hardware: mmseg used 4 V100s (batch 2 each); sized here for one GPU with
>= 80 GB or 8 smaller ones. Not yet timed.
Expected result: mmseg's published Cityscapes val mIoU, single scale: 80.97
(R-101-D8, 80k; 82.03 multi-scale + flip), 80.09 for ResNet-50. jaxres has
not reproduced it: no Cityscapes run has been made. The differences from
mmseg listed in deeplabv3plus_resnet50_voc.py apply (backbone stem, plain
convs, no photometric jitter, poly to 0); the scale jitter matches here
(mmseg's scale (2048, 1024) is the original Cityscapes size).
"""
from configs import segmentation_common


def get_config():
  c = segmentation_common.mmseg_deeplabv3plus_config(101)
  c.dataset = 'cityscapes'
  c.crop_size = (512, 1024)
  c.batch_size = 8
  c.lr_base_batch_size = 8
  c.eval_batch_size = 8
  c.inference = 'slide'
  c.slide_crop = (512, 1024)
  c.slide_stride = (341, 682)
  segmentation_common.mmseg_steps(c, 80_000, 8_000)
  c.lock()
  return c
