"""The train state and the model it holds, as every task builds them.

A TrainState is (step, params, batch_stats, opt_state); for a run with
config.ema_decay > 0 it is an EmaTrainState, which adds the exponential moving
averages of the params and of the BatchNorm statistics (ema_params,
ema_batch_stats). Two classes, not None fields: Orbax records a None leaf in a
checkpoint's tree, and a run without EMA must keep restoring the checkpoints
written before EMA existed. The model comes from
the registry in `jaxres.models` with the config's dtype and keyword arguments.
The model validates its own arguments (output_stride, stem, backbone, ...):
`build_model` turns those errors into a ConfigError at start-up, so each
argument is checked in exactly one place, the model that takes it.
"""
from __future__ import annotations

import logging
import os
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

  has_ema = False


class EmaTrainState(TrainState):
  """A TrainState with the EMA of its params and BatchNorm statistics."""
  ema_params: Any = None
  ema_batch_stats: Any = None

  has_ema = True

  def ema_weights(self) -> 'EmaTrainState':
    """The same state with the EMA weights in params/batch_stats (same tree,
    so a jitted evaluation step runs it without recompiling)."""
    return self.replace(params=self.ema_params,
                        batch_stats=self.ema_batch_stats)

  def without_ema(self) -> TrainState:
    return TrainState(step=self.step, apply_fn=self.apply_fn,
                      params=self.params, tx=self.tx, opt_state=self.opt_state,
                      batch_stats=self.batch_stats)


def ema_decay_at(step, decay: float, every: int, warmup_steps: int):
  """The EMA decay applied after optimizer step `step` (1-based).

  0 (a copy of the model) while step <= warmup_steps, as torchvision's
  reference resets its average during the learning-rate warmup; `decay`
  every `every` steps after that; 1 (unchanged) at the other steps.
  """
  decay = jnp.where(step <= warmup_steps, 0., decay)
  return jnp.where(step % every == 0, decay, 1.).astype(jnp.float32)


def update_ema(state: TrainState, decay) -> TrainState:
  """ema <- decay * ema + (1 - decay) * model, for params and batch_stats."""
  average = lambda e, p: (decay * e + (1. - decay) * p).astype(e.dtype)
  return state.replace(
      ema_params=jax.tree.map(average, state.ema_params, state.params),
      ema_batch_stats=jax.tree.map(average, state.ema_batch_stats,
                                   state.batch_stats))


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


def create_train_state(model, tx, rng, input_shape,
                       ema: bool = False) -> TrainState:
  params, batch_stats = init_variables(model, rng, input_shape)
  if ema:  # The average starts as a copy of the initial model.
    return EmaTrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats,
        ema_params=params, ema_batch_stats=batch_stats)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=batch_stats)


# A fresh run's initial state is computed once, but on CPU compiling it was
# the largest item of the quickstart's start-up: the initializers (threefry
# and a truncated normal per parameter) are ~300 fusions that LLVM optimises
# at XLA's default level for 32 CPU-seconds (the quickstart's ResNet-18; 6.9
# at level 1; experiments/init_compile_benchmark.py, BENCHMARKS.md). At
# level 1 the initial values of the quickstarts' models, ResNet-50 and
# MobileNetV2 are bit-identical to the default level's; LLVM can round a few
# values of other shapes apart, by at most 2 units in the last place
# (tests/test_train_state.py: 2 of 108 in a tiny model's 3x3x3x4 stem), so a
# fresh run starts from the same seed and distribution, and for those models
# from the same bits. (Level 0 compiles a little faster but moves ~2 % of all
# values by up to 4 ulps.) CPU only; set JAXRES_INIT_OPT_LEVEL= (empty) to
# compile at XLA's default level.
INIT_OPT_LEVEL_ENV = 'JAXRES_INIT_OPT_LEVEL'
DEFAULT_INIT_OPT_LEVEL = '1'


def init_compiler_options() -> dict:
  """Compiler options for the fresh-state computation on this platform."""
  level = os.environ.get(INIT_OPT_LEVEL_ENV, DEFAULT_INIT_OPT_LEVEL).strip()
  if not level or jax.default_backend() != 'cpu':
    return {}
  if level not in ('0', '1', '2', '3'):
    raise ConfigError(f'{INIT_OPT_LEVEL_ENV}={level!r}: give an XLA backend '
                     'optimisation level 0-3, or nothing for the default.')
  return {'xla_backend_optimization_level': int(level)}


def run_init(jitted_init, rng):
  """jitted_init(rng), compiled with init_compiler_options()."""
  options = init_compiler_options()
  if not options:
    return jitted_init(rng)
  return jitted_init.lower(rng).compile(compiler_options=options)(rng)


def init_from_pretrained(config, state: TrainState, replicated) -> TrainState:
  """Replaces the fresh variables by config.init_from (a new run only)."""
  from jaxres import convert  # pylint: disable=g-import-not-at-top
  loaded = convert.load_pretrained(
      config.init_from,
      {'params': state.params, 'batch_stats': state.batch_stats},
      config.model, backbone_only=config.init_backbone_only, log=logging.info)
  loaded = jax.device_put(loaded, replicated)
  state = state.replace(params=loaded['params'],
                        batch_stats=loaded.get('batch_stats', state.batch_stats))
  if state.has_ema:  # The average starts from the loaded weights.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    state = state.replace(ema_params=copy(state.params),
                          ema_batch_stats=copy(state.batch_stats))
  return state
