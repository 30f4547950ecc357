r"""Segmentation quickstart: a narrow UNet-ResNet18 on the embedded shapes, 32x32.

`shapes_seg` is drawn by jaxres itself (background + circle, square, triangle,
cross, ring on textured backgrounds, partly covered border pixels marked 255),
here at 32x32 (`image_size` sets the size it is drawn at), so this runs on a
fresh machine with no network or downloads. UNet-ResNet18 (basic blocks) at
1/4 width (ResNet base width 16, decoder 16/32/64/64, 0.99M parameters),
cross-entropy + Dice loss, AdamW 8e-3 with 50 warmup steps and cosine decay,
5,200 steps of batch 16 (41.6 epochs of 2,000 images), one eval at the end.

Command:
  python -m jaxres.main --config=configs/seg_quickstart.py \
      --workdir=/tmp/seg_quickstart
  python -m jaxres.predict --workdir=/tmp/seg_quickstart \
      --config=configs/seg_quickstart.py --input=IMAGE_OR_FOLDER \
      --output=/tmp/seg_quickstart_pred

Measured 2026-12-02 on an AMD EPYC with AVX2 (no AVX-512), with the training
step's CPU forms of that afternoon: eval mIoU 76.45% (pixel accuracy 97.21%,
mDice 86.20%); the run shared the 2 cores with the test suite, so its time
(17 min 51 s) is not the quickstart's. The figure depends on the CPU's
instruction set (README, Quickstart). Earlier the same day, on the earlier
machine with the code of the morning (the command above with
--config.compilation_cache_dir= so compilation counts, quiet: load average
below 2 at the start): 2 min 48 s wall (168.4 s; 278.5 CPU s), eval mIoU 75.50%
(pixel accuracy 97.04%, mean class accuracy 84.83%, mDice 85.48%) on the 200
eval images. The same recipe for 6,000 steps: 76.52% in 2 min 59.5 s (the same
figure in four runs, three of them on a loaded machine); 4,000 steps: 74.0%. Predicting background everywhere
scores 14.34% mIoU on these 32x32 eval masks (background is 86.0% of the
labelled pixels). The previous quickstart (UNet-ResNet50 at 64x64, 2,000
steps) reached 74.4% in ~14-17 min.
"""
from configs import segmentation_common


def get_config():
  c = segmentation_common.segmentation_config()
  c.model = 'unet_resnet18'
  c.model_kwargs.backbone_width = 16
  c.model_kwargs.decoder_filters = (16, 32, 64, 64)
  c.dataset = 'shapes_seg'
  c.num_classes = 6
  c.image_size = 32  # shapes_seg is drawn at this size.
  c.shapes_train_size = 2000
  c.shapes_eval_size = 200
  c.crop_size = 32
  c.scale_range = (0.75, 1.5)
  c.losses = 'ce+dice'
  c.batch_size = 16
  c.eval_batch_size = 40
  c.data_workers = 2
  c.optimizer = 'adamw'
  c.learning_rate = 8e-3
  c.lr_base_batch_size = 16
  c.weight_decay = 1e-4
  c.schedule = 'cosine'
  c.num_train_steps = 5200
  c.warmup_steps = 50
  c.log_every_steps = 500
  c.eval_every_steps = 5200  # Once, at the end: an eval costs ~10 steps.
  c.checkpoint_every_steps = 5200
  c.num_eval_images = 4
  c.lock()
  return c
