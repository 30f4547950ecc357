"""The fresh state compiled at XLA:CPU optimisation level 1 equals the default's
to the last bit or two (LLVM -O1 and -O2 round a few initializer values apart)."""
import functools

import jax
import numpy as np
import optax
import pytest

from jaxres import train_state
from jaxres.config_checks import ConfigError
from jaxres.models import resnet


def test_init_at_level_1_matches_the_default(monkeypatch):
  # Two stages: stem, BasicBlocks, a downsample 1x1 conv, BatchNorms and the
  # classifier: each kind of initializer the models use.
  model = resnet.ResNet(stage_sizes=(1, 1), block_cls=resnet.BasicBlock,
                        num_classes=3, width=4, stem='cifar')
  init = jax.jit(functools.partial(
      train_state.create_train_state, model, optax.sgd(0.1, momentum=0.9),
      input_shape=(8, 8, 3)))
  rng = jax.random.key(3)
  monkeypatch.setenv(train_state.INIT_OPT_LEVEL_ENV, '')
  assert train_state.init_compiler_options() == {}
  default = train_state.run_init(init, rng)
  monkeypatch.delenv(train_state.INIT_OPT_LEVEL_ENV)
  assert train_state.init_compiler_options() == {
      'xla_backend_optimization_level': 1}  # The tests run on CPU.
  level_1 = train_state.run_init(init, rng)
  leaves = jax.tree.leaves(default)
  assert len(leaves) > 10
  for a, b in zip(leaves, jax.tree.leaves(level_1), strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.kind == 'f':  # At most 2 units in the last place apart.
      ulps = np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b)))
      assert np.all(ulps <= 2), np.max(ulps)
      assert np.mean(a != b) < 0.1
    else:
      np.testing.assert_array_equal(a, b)
  assert np.std(np.asarray(level_1.params['conv1']['kernel'])) > 0


def test_bad_level_is_a_config_error(monkeypatch):
  monkeypatch.setenv(train_state.INIT_OPT_LEVEL_ENV, 'fast')
  with pytest.raises(ConfigError, match='JAXRES_INIT_OPT_LEVEL'):
    train_state.init_compiler_options()
