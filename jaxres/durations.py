"""Durations in the unit the user thinks in, turned into steps in one place.

A config may say `num_epochs`, `num_train_steps` or `num_train_examples` (and
the same for warmup and checkpoint/eval intervals); the loop only sees steps.
"""
import math


def steps_from(config, name: str, *, batch_size: int, steps_per_epoch: int,
               default=None):
  """Returns the duration `name` as steps.

  Looks for `{name}_steps`, `{name}_epochs` and `{name}_examples` in the config;
  where several are set, steps win over examples, and examples over epochs,
  so `--config.num_train_steps=100` overrides a config written in epochs.
  """
  keys = {unit: f'{name}_{unit}' for unit in ('steps', 'epochs', 'examples')}
  given = {unit: config.get(key) for unit, key in keys.items()
           if config.get(key) is not None}
  if not given:
    if default is None:
      raise ValueError(f'Set one of {", ".join(keys.values())} in the config.')
    return default
  unit = next(u for u in ('steps', 'examples', 'epochs') if u in given)
  value = given[unit]
  if value < 0:
    raise ValueError(f'config.{keys[unit]}={value} must not be negative.')
  if unit == 'steps':
    return int(value)
  if unit == 'epochs':
    return int(math.ceil(value * steps_per_epoch))
  return int(math.ceil(value / batch_size))
