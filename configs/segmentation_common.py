"""Fields shared by the segmentation configs (on top of `common.base_config`).

Every field can be overridden from the command line, e.g.
`--config.losses=ce+dice --config.loss_weights.dice=0.5`.
"""
import ml_collections

from configs import common

optional = common.optional


def segmentation_config() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = 'segmentation'

  # Model: 'unet_resnet50', 'unet_vgg16', 'deeplabv3plus_mobilenet_v2',
  # 'deeplabv3plus_resnet50', 'deeplabv3plus_resnet101'.
  c.model = 'deeplabv3plus_mobilenet_v2'
  c.model_kwargs = ml_collections.ConfigDict()
  c.model_kwargs.align_corners = True  # bubbliiiing: True; VainF: False.

  # Data (see jaxres/data/segmentation.py). 255 in masks means "ignore".
  c.dataset = 'voc'
  c.data_dir = optional(str)  # VOC-style root, or the TFDS data dir.
  c.num_classes = optional(int)  # Including background; None: the dataset's.
  c.class_names = optional(tuple)
  c.crop_size = 512  # Training crop (square side).
  c.scale_range = (0.5, 2.0)
  # None: evaluate at full resolution (padded to eval_pad_multiple); an int
  # or (h, w): resize inputs to it and the logits back to each label's size.
  c.eval_size = optional(object)
  c.eval_pad_multiple = 32
  c.binary_mask_255_to_1 = False
  c.data_workers = 8
  c.label_check_files = 300
  c.voc_image_dir = 'JPEGImages'
  c.voc_mask_dir = optional(str)  # None: SegmentationClass(Aug), detected.
  c.voc_split_dir = 'ImageSets/Segmentation'
  c.voc_image_ext = optional(str)
  c.voc_mask_ext = '.png'
  c.pets_border = 'ignore'
  c.batch_size = 16
  c.eval_batch_size = 8

  # Losses: names from 'ce', 'dice', 'focal' joined by '+'.
  c.losses = 'ce'
  c.loss_weights = ml_collections.ConfigDict({'ce': 1.0, 'dice': 1.0,
                                              'focal': 1.0})
  c.class_weights = optional(tuple)  # One weight per class, or None.
  c.focal_gamma = 2.0
  c.focal_alpha = optional(float)
  c.dice_smooth = 1.0

  # Optimisation: learning_rate is per lr_base_batch_size images.
  c.optimizer = 'sgd'
  c.learning_rate = 0.01
  c.lr_base_batch_size = 16
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.schedule = 'poly'
  c.poly_power = 0.9

  # Backbone freezing: the backbone gets no update for this long (set one).
  c.freeze_backbone_epochs = optional(float)
  c.freeze_backbone_steps = optional(int)
  c.freeze_backbone_examples = optional(int)
  # While frozen, True: backbone BatchNorm in train mode (batch statistics,
  # running averages updated); False: inference mode (running averages).
  c.freeze_bn_train_mode = True

  c.num_eval_images = 3  # Overlays written to TensorBoard at each eval.
  c.log_every_steps = 50

  # Inference modes, for evaluation and jaxres.predict (jaxres/seg_inference.py;
  # predict's --inference, --slide_crop, ... flags override them).
  # 'whole': the (padded) image at once; 'slide': windows of slide_crop
  # every slide_stride pixels, overlapping logits averaged (mmseg's slide).
  c.inference = 'whole'
  c.slide_crop = optional(object)  # int or (h, w); None: crop_size.
  c.slide_stride = optional(object)  # int or (h, w); None: 2/3 of the crop.
  c.slide_batch = 8  # Windows of each image per step (bounds the memory).
  # Test-time augmentation: each scale (and its mirror image if
  # inference_flip), softmax averaged at the input size. (1.0,) and False:
  # none.
  c.inference_scales = (1.0,)
  c.inference_flip = False
  return c


def voc_config():
  """PASCAL VOC 2012 + SBD at 512: the data and schedule the VOC configs share.

  Returned unlocked: each VOC config sets its model and optimizer, then locks.
  """
  c = segmentation_config()
  c.dataset = 'voc'
  c.num_classes = 21
  c.train_split = 'train_aug'
  c.eval_split = 'val'
  c.crop_size = 512
  c.batch_size = 16
  c.eval_batch_size = 8
  c.lr_base_batch_size = 16
  c.schedule = 'cosine'
  c.num_train_epochs = 100.0
  c.freeze_backbone_epochs = 50.0
  c.freeze_bn_train_mode = True
  c.eval_every_epochs = 5.0
  c.checkpoint_every_epochs = 1.0
  return c
