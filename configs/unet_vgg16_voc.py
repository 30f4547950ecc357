r"""UNet on VGG16 (bubbliiiing/unet-pytorch decoder), PASCAL VOC 2012 + SBD.

The bubbliiiing recipe: Adam lr 1e-4 (beta1 0.9), no weight decay, cosine
decay over 100 epochs, backbone frozen for the first 50 (VGG16 has no
BatchNorm), 512 input, align_corners=True upsampling. Random scale
0.5-2.0, 512x512 crops and flips; evaluation at full resolution.

Data: a VOC-style root (JPEGImages/, SegmentationClassAug/,
ImageSets/Segmentation/{train_aug,val}.txt); with plain VOC 2012 use
--config.train_split=train. Start from ImageNet VGG16 weights (torchvision
vgg16 .pth, converted on the fly) as the reference does.

Command:
  python -m jaxres.main --config=configs/unet_vgg16_voc.py \
      --workdir=runs/unet_vgg16_voc --config.data_dir=/data/VOCdevkit/VOC2012 \
      --config.init_from=/path/vgg16-397923af.pth --config.init_backbone_only=True

Hardware: sized for one GPU with >= 40 GB at batch 16 (UNet decodes at full
resolution; lower --config.batch_size if memory is short). Not yet timed.
Expected result: the target is bubbliiiing's published VOC 2012 val mIoU for
UNet-VGG16, 58.78 (VOC+SBD, 512 input). jaxres has not reproduced it yet:
no VOC run has been made.
"""
from configs import unet_resnet50_voc


def get_config():
  c = unet_resnet50_voc.get_config()
  c.unlock()
  c.model = 'unet_vgg16'
  c.lock()
  return c
