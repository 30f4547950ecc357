"""Checks of config values, so a mistake fails at start with a clear message."""
from jaxres import optim

_STRIDES = (8, 16, 32)


class ConfigError(ValueError):
  """A config value is out of range or inconsistent."""


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
  need(config.weight_decay >= 0,
       f'weight_decay={config.weight_decay} must be >= 0.')
  need(0 <= config.get('label_smoothing', 0.0) < 1,
       f'label_smoothing={config.get("label_smoothing")} must be in [0, 1).')
  need(config.optimizer in optim.OPTIMIZERS,
       f'optimizer={config.optimizer!r} is not one of {optim.OPTIMIZERS}.')
  need(config.schedule in optim.SCHEDULES,
       f'schedule={config.schedule!r} is not one of {optim.SCHEDULES}.')
  need(config.dtype in ('float32', 'bfloat16', 'float16'),
       f'dtype={config.dtype!r} is not one of float32, bfloat16, float16.')
  import jax  # pylint: disable=g-import-not-at-top
  from jaxres import models  # pylint: disable=g-import-not-at-top
  devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    need(config[field] % devices == 0,
         f'{field}={config[field]} must be a multiple of the device count '
         f'({devices} devices here), e.g. {max(devices, config[field] // devices * devices)}.')
  need(config.model in models.MODELS,
       f'model={config.model!r} is unknown. Known models: '
       f'{", ".join(sorted(models.MODELS))}.')
  kwargs = config.get('model_kwargs') or {}
  if 'output_stride' in kwargs:
    need(kwargs['output_stride'] in _STRIDES,
         f'model_kwargs.output_stride={kwargs["output_stride"]} is not one of '
         f'{_STRIDES}.')
  if config.get('num_classes') is not None:
    need(config.num_classes > 0, f'num_classes={config.num_classes} must be > 0.')
  if problems:
    raise ConfigError('Invalid config:\n  ' + '\n  '.join(problems) +
                      '\nFix the config file or the --config.<field> override.')
