r"""DeepLabV3+ on MobileNetV2 (output stride 16, 512 crop), PASCAL VOC 2012 + SBD.

The bubbliiiing/deeplabv3-plus-pytorch recipe: SGD momentum 0.9, lr 7e-3 per 16
images, weight decay 1e-4, cosine decay over 100 epochs, backbone frozen for
the first 50 (BatchNorm kept in train mode, as there), random scale 0.5-2.0,
512x512 crops with flips, align_corners=True upsampling. Evaluation at full
resolution (padded to a multiple of 32, scored on the original pixels).

Data: a VOC-style root (JPEGImages/, SegmentationClassAug/ with the SBD masks,
ImageSets/Segmentation/{train_aug,val}.txt); with plain VOC 2012 use
--config.train_split=train. The reference starts from an ImageNet MobileNetV2:
convert one first (python -m jaxres.convert, see README) and pass it.

Command:
  python -m jaxres.main --config=configs/deeplabv3plus_mobilenetv2_voc.py \
      --workdir=runs/dlv3p_mnv2_voc --config.data_dir=/data/VOCdevkit/VOC2012 \
      --config.init_from=/path/mobilenet_v2_converted --config.init_backbone_only=True

Hardware: sized for one GPU with >= 16 GB at batch 16 (not yet timed).
Expected result: the target is the published VOC 2012 val mIoU of this
architecture, 72.59 (bubbliiiing, VOC+SBD, 512 input) or 71.1 (VainF, 513
crops, OS16). jaxres has not reproduced it yet: no VOC run has been made.
"""
from configs import segmentation_common


def get_config():
  c = segmentation_common.voc_config()
  c.model = 'deeplabv3plus_mobilenet_v2'
  c.model_kwargs.output_stride = 16
  c.model_kwargs.align_corners = True
  c.optimizer = 'sgd'
  c.learning_rate = 7e-3
  c.weight_decay = 1e-4
  c.lock()
  return c
