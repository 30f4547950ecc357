r"""UNet on ResNet-50 for your own two-class (foreground/background) folder.

  <data_dir>/Images/<name>.jpg|png    (or images/, imgs/, ...: detected)
  <data_dir>/Labels/<name>.png        (or masks/, labels/, annotations/, ...)

Images and masks pair by file stem (folder_mask_suffix='_mask' for
<name>_mask.png); 10% of the pairs, chosen by a hash of the stem with
split_seed, are the eval split (or list stems in <folder_split_dir>/
{train,val}.txt). Masks hold 0 = background and 1 = foreground; masks saved
as black/white 0/255 are detected at start-up, and
--config.binary_mask_255_to_1=True reads them as 0/1. 255 elsewhere means
ignore. More classes: --config.num_classes=K with masks 0..K-1.

The bubbliiiing/unet-pytorch recipe for own data: Adam lr 1e-4, no weight
decay, cosine decay over 100 epochs with the backbone frozen for the first 50
(BatchNorm in train mode), 512 crops after a random scale 0.5-2.0, flips,
cross-entropy + Dice (the reference's advice for few classes).

Command:
  python -m jaxres.main --config=configs/unet_own_folder.py \
      --workdir=runs/unet_own --config.data_dir=/data/my_masks \
      --config.binary_mask_255_to_1=True \
      --config.init_from=/path/resnet50-0676ba61.pth --config.init_backbone_only=True

Hardware: one GPU with >= 24 GB at batch 8 (lower --config.batch_size or
--config.crop_size otherwise); time depends on the folder size.
Expected result: no published target, the data is yours. Compare the eval
foreground IoU with the background-only baseline (background IoU / 2 for
the mIoU); a foreground IoU of 0 means the masks are not read as classes.
"""
from configs import segmentation_common


def get_config():
  c = segmentation_common.segmentation_config()
  c.model = 'unet_resnet50'
  c.model_kwargs.align_corners = True
  c.dataset = 'folder'
  c.num_classes = 2
  c.crop_size = 512
  c.scale_range = (0.5, 2.0)
  c.val_fraction = 0.1
  c.split_seed = 0
  c.batch_size = 8
  c.eval_batch_size = 8
  c.lr_base_batch_size = 8
  c.losses = 'ce+dice'
  c.optimizer = 'adamw'
  c.learning_rate = 1e-4
  c.weight_decay = 0.0
  c.schedule = 'cosine'
  c.num_train_epochs = 100.0
  c.freeze_backbone_epochs = 50.0
  c.freeze_bn_train_mode = True
  c.eval_every_epochs = 5.0
  c.checkpoint_every_epochs = 5.0
  c.lock()
  return c
