r"""UNet on ResNet-50 (bubbliiiing/unet-pytorch decoder), PASCAL VOC 2012 + SBD.

The bubbliiiing recipe: Adam lr 1e-4 (beta1 0.9), no weight decay, cosine
decay over 100 epochs, backbone frozen for the first 50 (BatchNorm kept in
train mode, as there), 512 input, align_corners=True upsampling. Random scale
0.5-2.0, 512x512 crops and flips; evaluation at full resolution.

Data: a VOC-style root (JPEGImages/, SegmentationClassAug/,
ImageSets/Segmentation/{train_aug,val}.txt); with plain VOC 2012 use
--config.train_split=train. Start from ImageNet ResNet-50 weights (torchvision
resnet50 .pth, converted on the fly) as the reference does.

Command:
  python -m jaxres.main --config=configs/unet_resnet50_voc.py \
      --workdir=runs/unet_r50_voc --config.data_dir=/data/VOCdevkit/VOC2012 \
      --config.init_from=/path/resnet50-0676ba61.pth --config.init_backbone_only=True

Hardware: sized for one GPU with >= 40 GB at batch 16 (UNet decodes at full
resolution; lower --config.batch_size if memory is short). Not yet timed.
Expected result: the target is bubbliiiing's published VOC 2012 val mIoU for
UNet-ResNet50, 67.53 (VOC+SBD, 512 input). jaxres has not reproduced it yet:
no VOC run has been made.
"""
from configs import segmentation_common


def get_config():
  c = segmentation_common.segmentation_config()
  c.model = 'unet_resnet50'
  c.model_kwargs.align_corners = True
  c.dataset = 'voc'
  c.num_classes = 21
  c.train_split = 'train_aug'
  c.eval_split = 'val'
  c.crop_size = 512
  c.batch_size = 16
  c.eval_batch_size = 8
  c.optimizer = 'adamw'
  c.learning_rate = 1e-4
  c.lr_base_batch_size = 16
  c.weight_decay = 0.0
  c.schedule = 'cosine'
  c.num_train_epochs = 100.0
  c.freeze_backbone_epochs = 50.0
  c.freeze_bn_train_mode = True
  c.eval_every_epochs = 5.0
  c.checkpoint_every_epochs = 1.0
  c.lock()
  return c
