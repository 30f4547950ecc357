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

  # Training extras: OHEM, class weights, auxiliary head
  # OHEM (mmseg's OHEMPixelSampler): the per-pixel losses (ce, focal) count
  # only pixels whose softmax probability of the true class is below
  # ohem_thresh, and at least the ohem_min_kept hardest pixels PER IMAGE (x
  # the global batch, as mmseg's min_kept; its cityscapes configs: thresh 0.7,
  # min_kept 100000). Ignore pixels never count. None: off.
  c.ohem_thresh = optional(float)
  c.ohem_min_kept = 100_000
  # Class weights from the training masks counted at start-up (the
  # label_check_files scanned): 'none', 'median_freq' (Eigen & Fergus:
  # median(freq) / freq_c) or 'inverse_log' (ENet: 1 / ln(1.02 + p_c)). Used
  # where class_weights would be (set only one of the two); logged at start
  # and saved in the run's dataset.json.
  c.class_weighting = 'none'
  # Weight of the cross-entropy of an auxiliary FCN head on the backbone's
  # stride-16 map (ResNet layer3; mmseg: 0.4). 0: no head. Training only:
  # evaluation, predict, export and init_from use the model without it.
  c.aux_loss_weight = 0.0
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
