"""Fields shared by the segmentation configs (on top of `common.base_config`).

Every field can be overridden from the command line, e.g.
`--config.losses=ce+dice --config.loss_weights.dice=0.5`.
"""
import ml_collections
from ml_collections import config_dict

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
  # Training crop: a square side or (h, w); `--config.crop_size='(512, 1024)'`.
  c.crop_size = config_dict.FieldReference(512, field_type=object)
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

  # Own folders and ADE20K (jaxres/data/seg_folder.py, ade20k.py).
  # dataset='folder': images and masks paired by file stem under data_dir.
  # Folder names None: detected (images/Images/imgs/..., masks/labels/
  # Labels/annotations/...); '{split}' in a name means one folder per split
  # ('images/{split}' -> images/train, images/val).
  c.folder_image_dir = optional(str)
  c.folder_mask_dir = optional(str)
  # Comma-separated, e.g. '.png,.tif'; None: common image types / lossless
  # mask types (.png .bmp .tif .tiff).
  c.folder_image_exts = optional(str)
  c.folder_mask_exts = optional(str)
  c.folder_mask_suffix = ''  # e.g. '_mask': cat.jpg pairs with cat_mask.png.
  # Unpaired files stop the run (listed); True: leave them out, with a count.
  c.folder_skip_unpaired = False
  # A folder (under data_dir) with <train_split>.txt and <eval_split>.txt
  # listing stems; None: split by val_fraction with split_seed.
  c.folder_split_dir = optional(str)
  c.val_fraction = 0.1
  c.split_seed = 0  # Fixed apart from config.seed: the split stays put.
  # 0 -> 255 (ignore), k -> k - 1 in the masks. None: True for ADE20K (its
  # 0 is "other"), False for own folders.
  c.reduce_zero_label = optional(bool)

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


def voc_data(c):
  """PASCAL VOC 2012 + SBD: 21 classes, trained on train_aug, evaluated on val."""
  c.dataset = 'voc'
  c.num_classes = 21
  c.train_split = 'train_aug'
  c.eval_split = 'val'
  return c


def crops_512(c):
  """512x512 crops in batches of 16 (the 4 GPUs x 4 of mmseg's recipes)."""
  c.crop_size = 512
  c.batch_size = 16
  c.eval_batch_size = 8
  c.lr_base_batch_size = 16
  return c


def voc_config():
  """PASCAL VOC 2012 + SBD at 512: the data and schedule the VOC configs share.

  Returned unlocked: each VOC config sets its model and optimizer, then locks.
  """
  c = voc_data(crops_512(segmentation_config()))
  c.schedule = 'cosine'
  c.num_train_epochs = 100.0
  c.freeze_backbone_epochs = 50.0
  c.freeze_bn_train_mode = True
  c.eval_every_epochs = 5.0
  c.checkpoint_every_epochs = 1.0
  return c


def mmseg_deeplabv3plus_config(depth: int):
  """mmsegmentation's DeepLabV3+ R-{depth}-D8 recipe, without the data.

  As in mmseg's configs/_base_/models/deeplabv3plus_r50-d8.py and
  schedule_*k.py: output stride 8 (ASPP rates 12/24/36), 48-channel
  low-level projection, align_corners=False, auxiliary FCN loss weight 0.4;
  SGD momentum 0.9, lr 0.01, weight decay 5e-4, poly decay (power 0.9), no
  warmup; random rescale 0.5-2.0, crop, flip; one forward pass on the whole
  image at test time. The head keeps jaxres's 256 channels with plain 3x3
  convs: mmseg's 512 channels are depthwise-separable there, and plain 3x3
  convs at 512 would make R-50 60M parameters; 256 plain channels give
  40.4M, about what mmseg's modules add up to (~41M without the auxiliary
  head, our count, not a published figure). 512x512 crops, batch 16
  (crops_512). Returned unlocked: each config sets the data and steps
  (and its own crop and batch where they differ), then locks.
  """
  c = segmentation_config()
  c.model = f'deeplabv3plus_resnet{depth}'
  c.model_kwargs.output_stride = 8
  c.model_kwargs.align_corners = False
  c.aux_loss_weight = 0.4
  c.optimizer = 'sgd'
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 5e-4
  c.schedule = 'poly'
  c.poly_power = 0.9
  c.scale_range = (0.5, 2.0)
  c.inference = 'whole'
  c.log_every_steps = 50
  return crops_512(c)


def mmseg_schedule(c, schedule: str, schedules: dict):
  """mmseg_steps for the schedule named on the command line (config:ARG)."""
  if schedule not in schedules:
    raise ValueError(f'Unknown schedule {schedule!r}; use one of '
                     f'{list(schedules)}.')
  return mmseg_steps(c, *schedules[schedule])


def mmseg_steps(c, steps: int, eval_every: int):
  """Sets the schedule length and the eval/checkpoint cadence (in steps)."""
  c.num_train_steps = steps
  c.eval_every_steps = eval_every
  c.checkpoint_every_steps = min(eval_every, 2_000)
  return c
