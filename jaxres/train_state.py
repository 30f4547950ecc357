"""The train state and the model it holds, as every task builds them.

A TrainState is (step, params, batch_stats, opt_state); the model comes from
the registry in `jaxres.models` with the config's dtype and keyword arguments.
The model validates its own arguments (output_stride, stem, backbone, ...):
`build_model` turns those errors into a ConfigError at start-up, so each
argument is checked in exactly one place, the model that takes it.
"""
from __future__ import annotations

import logging
from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp

from jaxres import models
from jaxres.config_checks import ConfigError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}


class TrainState(train_state.TrainState):
  batch_stats: Any


def compute_dtype(config):
  if config.dtype not in DTYPES:
    raise ConfigError(f'config.dtype={config.dtype!r}; choose one of '
                      f'{", ".join(DTYPES)}.')
  return DTYPES[config.dtype]


def build_model(config, num_classes: int):
  """The configured flax module; bad model arguments are a ConfigError."""
  kwargs = dict(config.model_kwargs)
  try:
    return models.build_model(config.model, num_classes=num_classes,
                              dtype=compute_dtype(config), **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model={config.model!r} with model_kwargs='
                      f'{kwargs}: {e}') from e


def init_variables(model, rng, input_shape):
  """Initialises params and batch_stats for one example of `input_shape`."""
  variables = model.init({'params': rng, 'dropout': rng},
                         jnp.zeros((1, *input_shape), jnp.float32), train=False)
  return variables['params'], variables.get('batch_stats', {})


def params_shape(model, input_shape):
  """The params tree as ShapeDtypeStructs (nothing is computed).

  Model arguments are validated while the model is traced, so this is also
  where a bad argument surfaces (as a ConfigError) before anything runs.
  """
  try:
    return jax.eval_shape(
        lambda r: init_variables(model, r, input_shape)[0], jax.random.key(0))
  except ValueError as e:
    raise ConfigError(f'The model does not build: {e} Fix config.model_kwargs.'
                      ) from e


def create_train_state(model, tx, rng, input_shape) -> TrainState:
  params, batch_stats = init_variables(model, rng, input_shape)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=batch_stats)


def init_from_pretrained(config, state: TrainState, replicated) -> TrainState:
  """Replaces the fresh variables by config.init_from (a new run only)."""
  from jaxres import convert  # pylint: disable=g-import-not-at-top
  loaded = convert.load_pretrained(
      config.init_from,
      {'params': state.params, 'batch_stats': state.batch_stats},
      config.model, backbone_only=config.init_backbone_only, log=logging.info)
  loaded = jax.device_put(loaded, replicated)
  return state.replace(params=loaded['params'],
                       batch_stats=loaded.get('batch_stats', state.batch_stats))
