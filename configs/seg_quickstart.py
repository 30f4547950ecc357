r"""Segmentation quickstart: a narrow UNet-ResNet50 on the embedded shapes.

`shapes_seg` is drawn by jaxres itself (background + circle, square, triangle,
cross, ring on textured backgrounds, 64x64, partly covered border pixels
marked 255), so this runs on a fresh machine with no network or downloads.
UNet-ResNet50 at 1/4 width (ResNet base width 16, decoder 32/64/128/128, 3.15M
parameters), cross-entropy + Dice loss, AdamW 3e-3 with cosine decay.

Command:
  python -m jaxres.main --config=configs/seg_quickstart.py \
      --workdir=/tmp/seg_quickstart
  python -m jaxres.predict --workdir=/tmp/seg_quickstart \
      --config=configs/seg_quickstart.py --input=IMAGE_OR_FOLDER \
      --output=/tmp/seg_quickstart_pred

Measured (2026-11-23): 2,000 steps of batch 16 (16 epochs of 2,000 images)
took 7 min 44 s wall on 2 CPU cores with the machine otherwise quiet, and
10 min 9 s wall on 2 shared CPU cores (x86 VM, ~114% CPU, other jobs
running; about 3 steps/s), peak memory 2.1 GB, and reached eval mIoU 74.9%
(pixel accuracy 96.8%, mean class accuracy 84.3%; per-class IoU background
98.6, circle 74.0, square 77.8, triangle 59.5, cross 68.3, ring 71.1) on the
200 eval images. Intermediate evals: 31.3% (step 500), 55.5% (1000), 72.4%
(1500). Predicting background everywhere scores about 14%.
"""
from configs import segmentation_common


def get_config():
  c = segmentation_common.segmentation_config()
  c.model = 'unet_resnet50'
  c.model_kwargs.backbone_width = 16
  c.model_kwargs.decoder_filters = (32, 64, 128, 128)
  c.dataset = 'shapes_seg'
  c.num_classes = 6
  c.image_size = 64
  c.shapes_train_size = 2000
  c.shapes_eval_size = 200
  c.crop_size = 64
  c.scale_range = (0.75, 1.5)
  c.losses = 'ce+dice'
  c.batch_size = 16
  c.eval_batch_size = 40
  c.data_workers = 2
  c.optimizer = 'adamw'
  c.learning_rate = 3e-3
  c.lr_base_batch_size = 16
  c.weight_decay = 1e-4
  c.schedule = 'cosine'
  c.num_train_epochs = 16.0
  c.warmup_epochs = 1.0
  c.log_every_steps = 100
  c.eval_every_epochs = 4.0
  c.checkpoint_every_epochs = 4.0
  c.num_eval_images = 4
  c.lock()
  return c
