"""Checks of config values, so a mistake fails at start with a clear message.

Only values the loop itself uses are checked here; each model checks its own
arguments (see `jaxres.train_state.build_model`) and each task its own fields.
"""
from jaxres import optim


class ConfigError(ValueError):
  """A config value is out of range or inconsistent."""


# Durations: (prefix, may be zero). A zero interval would never fire or divide
# by zero; a zero-length run or warmup is allowed.
_DURATIONS = (('num_train', True), ('warmup', True), ('eval_every', False),
              ('checkpoint_every', False), ('log_every', False),
              ('ema_warmup', True))


def _check_augment(config, need):
  from jaxres.data import augment  # pylint: disable=g-import-not-at-top
  need(config.augment in augment.POLICIES,
       f'augment={config.augment!r} is not one of '
       f'{", ".join(augment.POLICIES)}.')
  if config.augment == 'randaugment':
    need(config.randaugment_n >= 1,
         f'randaugment_n={config.randaugment_n} must be >= 1 (ops per '
         "image; augment='none' turns RandAugment off).")
    need(0 <= config.randaugment_m <= augment.MAX_LEVEL,
         f'randaugment_m={config.randaugment_m} must be in [0, '
         f'{augment.MAX_LEVEL:g}] (timm\'s scale; torchvision\'s 0-30 bins '
         'are not used here).')
    need(config.randaugment_mstd >= 0,
         f'randaugment_mstd={config.randaugment_mstd} must be >= 0 '
         '(inf draws the magnitude uniformly in [0, randaugment_m]).')
  need(0 <= config.random_erasing <= 1,
       f'random_erasing={config.random_erasing} must be a probability in '
       '[0, 1].')
  crop_pct = config.get('eval_crop_pct')
  need(crop_pct is None or 0 < crop_pct <= 1,
       f'eval_crop_pct={crop_pct} must be in (0, 1] (e.g. 0.875 = resize '
       'to 256 and crop 224), or None for the pipeline default.')
  interpolation = config.get('interpolation')
  need(interpolation is None or interpolation in augment.INTERPOLATIONS,
       f'interpolation={interpolation!r} is not one of '
       f'{", ".join(augment.INTERPOLATIONS)} (or None for the pipeline '
       'default).')
  train_size = config.get('train_image_size')
  if train_size is not None:
    need(isinstance(train_size, int) and train_size > 0,
         f'train_image_size={train_size} must be a positive int (the side '
         'of the training crop), or None for image_size.')
    need(config.get('dataset') not in ('shapes', 'synthetic') or
         train_size == config.image_size,
         f'train_image_size={train_size} with image_size={config.image_size}:'
         ' a separate training crop size applies to the random-resized crop '
         f'of TFDS and folder datasets, not dataset={config.get("dataset")!r}'
         ' (whose train and eval images are both image_size); set '
         'train_image_size=None.')
  need(config.get('dataset') not in ('shapes', 'synthetic') or (
      config.augment == 'none' and config.random_erasing == 0),
       f'augment={config.augment!r}, random_erasing={config.random_erasing}: '
       'augmentation applies to TFDS and folder datasets, not '
       f'dataset={config.get("dataset")!r} (whose pipeline would ignore it); '
       "set augment='none' and random_erasing=0.")


def check_config(config):
  problems = []

  def need(ok, message):
    if not ok:
      problems.append(message)

  need(config.learning_rate > 0,
       f'learning_rate={config.learning_rate} must be > 0.')
  need(config.batch_size > 0, f'batch_size={config.batch_size} must be > 0.')
  need(config.eval_batch_size > 0,
       f'eval_batch_size={config.eval_batch_size} must be > 0.')
  need(config.lr_base_batch_size > 0,
       f'lr_base_batch_size={config.lr_base_batch_size} must be > 0.')
  need(config.weight_decay >= 0,
       f'weight_decay={config.weight_decay} must be >= 0.')
  if 'label_smoothing' in config:
    need(0 <= config.label_smoothing < 1,
         f'label_smoothing={config.label_smoothing} must be in [0, 1).')
  need(config.grad_clip_norm is None or config.grad_clip_norm > 0,
       f'grad_clip_norm={config.grad_clip_norm} must be > 0 (or None).')
  need(config.optimizer in optim.OPTIMIZERS,
       f'optimizer={config.optimizer!r} is not one of {optim.OPTIMIZERS}.')
  need(config.schedule in optim.SCHEDULES,
       f'schedule={config.schedule!r} is not one of {optim.SCHEDULES}.')
  need(config.dtype in ('float32', 'bfloat16', 'float16'),
       f'dtype={config.dtype!r} is not one of float32, bfloat16, float16.')
  need(config.input_dtype in ('float32', 'bfloat16'),
       f'input_dtype={config.input_dtype!r} is not one of float32, bfloat16.')
  need(config.max_checkpoints_to_keep is None or
       config.max_checkpoints_to_keep >= 1,
       f'max_checkpoints_to_keep={config.max_checkpoints_to_keep} must be >= 1 '
       '(or None to keep every checkpoint); 0 would delete them all.')
  for prefix, zero_ok in _DURATIONS:
    for unit in ('steps', 'epochs', 'examples'):
      name = f'{prefix}_{unit}'
      value = config.get(name)
      if value is not None:
        need(value > 0 or (zero_ok and value == 0),
             f'{name}={value} must be {">= 0" if zero_ok else "> 0"}.')
  if 'grad_accum_steps' in config:
    _check_recipes(config, need)
  if 'tfds_read' in config:
    need(config.tfds_read in ('auto', 'shards', 'stream'),
         f'tfds_read={config.tfds_read!r} is not one of auto, shards, stream.')
  if 'inference' in config:  # Segmentation inference modes.
    from jaxres import seg_inference  # pylint: disable=g-import-not-at-top
    problems += seg_inference.config_problems(config)
  if 'augment' in config:
    _check_augment(config, need)
  if config.get('num_classes') is not None:
    need(config.num_classes > 0, f'num_classes={config.num_classes} must be > 0.')
  import jax  # pylint: disable=g-import-not-at-top
  from jaxres import models  # pylint: disable=g-import-not-at-top
  devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    need(config[field] % devices == 0,
         f'{field}={config[field]} must be a multiple of the device count '
         f'({devices} devices here), e.g. '
         f'{max(devices, config[field] // devices * devices)}.')
  accum = config.get('grad_accum_steps') or 1
  if accum > 1:
    need(config.batch_size % (accum * devices) == 0,
         f'batch_size={config.batch_size} must be a multiple of '
         f'grad_accum_steps x devices ({accum} x {devices}): each device '
         'takes the same share of every micro-batch.')
  need(config.model in models.MODELS,
       f'model={config.model!r} is unknown. Known models: '
       f'{", ".join(sorted(models.MODELS))}.')
  if problems:
    raise ConfigError('Invalid config:\n  ' + '\n  '.join(problems) +
                      '\nFix the config file or the --config.<field> override.')


def _check_recipes(config, need):
  """Mixup/CutMix, loss, EMA, accumulation, LARS (classification fields)."""
  from jaxres import mixup  # pylint: disable=g-import-not-at-top
  for name in ('mixup_alpha', 'cutmix_alpha'):
    need(config[name] >= 0, f'{name}={config[name]} must be >= 0 (0: off).')
  for name in ('mixup_prob', 'mixup_switch_prob'):
    need(0 <= config[name] <= 1, f'{name}={config[name]} must be in [0, 1].')
  need(config.loss in mixup.LOSSES,
       f'loss={config.loss!r} is not one of {mixup.LOSSES}.')
  thresh = config.bce_target_thresh
  need(thresh is None or (config.loss == 'bce' and 0 <= thresh < 1),
       f'bce_target_thresh={thresh} needs loss=\'bce\' and a value in '
       '[0, 1) (ResNet strikes back: 0.2), or None.')
  need(0 <= config.ema_decay < 1,
       f'ema_decay={config.ema_decay} must be in [0, 1) (0: no EMA; '
       'typical 0.9998-0.99999).')
  need(config.ema_every_steps >= 1,
       f'ema_every_steps={config.ema_every_steps} must be >= 1.')
  need(not config.eval_use_ema or config.ema_decay > 0,
       'eval_use_ema=True needs a run trained with ema_decay > 0 (there are '
       'no EMA weights to evaluate otherwise).')
  need(config.grad_accum_steps >= 1,
       f'grad_accum_steps={config.grad_accum_steps} must be >= 1.')
  need(config.lars_trust_coefficient > 0,
       f'lars_trust_coefficient={config.lars_trust_coefficient} must be > 0.')
