"""Every experiment config loads, passes the checks and builds its model."""
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from jaxres import config_checks, train_state

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs')
FILES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
               if f.endswith('.py') and f not in ('__init__.py', 'common.py',
                                                  'segmentation_common.py'))
# A file with ARGS is one config per argument (`--config=configs/f.py:arg`).
CONFIGS = sorted(
    f'{name}:{arg}' if arg else name for name in FILES
    for arg in getattr(importlib.import_module(f'configs.{name}'), 'ARGS', [''])
)


def test_all_configs_are_listed():
  assert 'quickstart' in CONFIGS and 'resnet50_imagenet' in CONFIGS
  assert 'resnet_imagenet:resnet152' in CONFIGS
  assert len(CONFIGS) >= 12


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_checks_and_builds(name):
  name, _, arg = name.partition(':')
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config(arg) if arg else module.get_config()
  assert config.is_locked, 'configs are locked so typos in overrides fail'
  doc = module.__doc__
  assert 'python -m jaxres.main' in doc and f'configs/{name}.py' in doc
  # Batch sizes fit 8 devices (the test process fakes 8 CPU devices).
  config_checks.check_config(config)
  num_classes = config.num_classes or 10
  model = train_state.build_model(config, num_classes)
  size = 64
  out = jax.eval_shape(
      lambda x: model.init_with_output(
          {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x,
          train=False)[0], jnp.zeros((1, size, size, 3)))
  expected = ((1, num_classes) if config.task == 'classification'
              else (1, size, size, num_classes))
  assert out.shape == expected
