r"""DeepLabV3+ on ResNet-50 (output stride 16), Cityscapes fine, 19 classes.

The VainF/DeepLabV3Plus-Pytorch Cityscapes recipe: SGD momentum 0.9, lr 0.1
per 16 images, weight decay 1e-4, poly decay (power 0.9) over 30k steps,
768x768 crops after a random scale 0.5-2.0, flips. VainF upsamples with
align_corners=False; this config does too. Evaluation on the full 1024x2048
validation images. Unlike VainF, it trains with mmseg's auxiliary FCN head on
layer3 (loss weight 0.4, training only; --config.aux_loss_weight=0 for the
plain VainF recipe).

Data: TFDS `cityscapes/semantic_segmentation` (manual download; labelIds are
mapped to the 19 train ids with 255 ignore). Start from ImageNet ResNet-50
weights (torchvision resnet50 .pth) as the reference does.

Command:
  python -m jaxres.main --config=configs/deeplabv3plus_resnet50_cityscapes.py \
      --workdir=runs/dlv3p_r50_cityscapes --config.data_dir=/data/tfds \
      --config.init_from=/path/resnet50-0676ba61.pth --config.init_backbone_only=True

Hardware: sized for 8 GPUs (batch 16, two 768 crops each) or one GPU with
>= 80 GB. Not yet timed.
Expected result: VainF publishes no ResNet-50 number for this recipe; it
reports Cityscapes val mIoU 72.1 (MobileNet) and 76.2 (ResNet-101) at OS16,
so a ResNet-50 should land between them. mmsegmentation's ResNet-50 number,
80.09 (R-50-D8, 512x1024 crops, 80k steps at batch 8, OS8, auxiliary head),
is for its own recipe: deeplabv3plus_resnet101_cityscapes.py with
--config.model=deeplabv3plus_resnet50. jaxres has not reproduced either: no
Cityscapes run has been made.
"""
from configs import segmentation_common


def get_config():
  c = segmentation_common.segmentation_config()
  c.model = 'deeplabv3plus_resnet50'
  c.model_kwargs.output_stride = 16
  c.model_kwargs.align_corners = False
  c.dataset = 'cityscapes'
  c.crop_size = 768
  c.batch_size = 16
  c.eval_batch_size = 8
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.lr_base_batch_size = 16
  c.weight_decay = 1e-4
  c.schedule = 'poly'
  c.poly_power = 0.9
  c.aux_loss_weight = 0.4
  c.num_train_steps = 30_000
  c.eval_every_steps = 5_000
  c.checkpoint_every_steps = 1_000
  c.log_every_steps = 100
  c.lock()
  return c
