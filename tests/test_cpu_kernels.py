"""The CPU-only training forms against XLA's / flax's own, and their switches.

Each hand-written form (a k x k convolution's kernel gradient as im2col
matmuls, the max pool's gradient from taps, BatchNorm's training gradient)
must be the same function as the form it replaces: outputs, gradients and
batch statistics, at small odd shapes. On CPU 'auto' must pick it; that check
is structural (what the lowered program holds), never a timing.
"""
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models import pooling
from jaxres.models import resnet

_close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)


def _weights(y):
  """A fixed non-uniform cotangent, so every output position counts."""
  return jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)


# ---------------------------------------------------------------------------
# k x k convolution: kernel gradient as im2col matmuls.
# ---------------------------------------------------------------------------

def _conv_grads(conv_fn, x, kernel, strides, padding, dilation):
  def loss(x, kernel):
    y = conv_fn(x, kernel, strides, padding, rhs_dilation=dilation,
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(y * _weights(y)), y
  return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, kernel)


@pytest.mark.parametrize('k,stride,dilation,padding,cout', [
    (3, 1, 1, ((1, 1), (1, 1)), 7),
    (3, 2, 1, ((1, 1), (1, 1)), 7),
    (3, 1, 2, ((2, 2), (2, 2)), 7),
    (3, 2, 1, 'SAME', 130),   # > 128 output channels: no explicit transpose.
    (3, 1, 1, 'VALID', 7),
    (7, 2, 1, ((3, 3), (3, 3)), 5),  # The ResNet stem.
])
def test_im2col_filter_grad_equals_xla(monkeypatch, k, stride, dilation,
                                       padding, cout):
  monkeypatch.setattr(layers, 'CONV_FILTER_GRAD_IMPL', 'im2col')
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, 11, 9, 5))
  kernel = jax.random.normal(kk, (k, k, 5, cout))
  args = ((stride, stride), padding, (dilation, dilation))
  (_, y), grads = _conv_grads(layers.conv_general_dilated, x, kernel, *args)
  (_, y_ref), grads_ref = _conv_grads(lax.conv_general_dilated, x, kernel,
                                      *args)
  _close(y, y_ref)
  for g, g_ref in zip(grads, grads_ref):
    _close(g, g_ref)


def _lowered_train_step(model, x, **apply_kwargs):
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    y, _ = model.apply(dict(variables, params=params), x, train=True,
                       mutable=['batch_stats'], **apply_kwargs)
    return jnp.sum(y ** 2)

  return jax.jit(jax.grad(loss)).lower(variables['params']).as_text()


def _tiny_resnet():
  return resnet.ResNet(stage_sizes=(1, 1), block_cls=resnet.BasicBlock,
                       num_classes=3, width=4)


def _op_counts(monkeypatch, cpu_forms):
  impl = 'auto' if cpu_forms else 'xla'
  monkeypatch.setattr(layers, 'CONV_FILTER_GRAD_IMPL', impl)
  monkeypatch.setattr(pooling, 'MAXPOOL_IMPL', impl)
  monkeypatch.setattr(batchnorm, 'BATCHNORM_IMPL', 'auto' if cpu_forms else 'flax')
  text = _lowered_train_step(_tiny_resnet(), jnp.ones((2, 32, 32, 3)))
  return {op: text.count(f'stablehlo.{op}') for op in (
      'convolution', 'select_and_scatter', 'reduce', 'concatenate')}


def test_cpu_resnet_step_uses_the_cpu_forms(monkeypatch):
  """Structural: what the lowered step of a small ResNet holds on CPU."""
  assert jax.default_backend() == 'cpu'
  cpu = _op_counts(monkeypatch, cpu_forms=True)
  xla = _op_counts(monkeypatch, cpu_forms=False)
  # 5 k x k convolutions (7x7 stem, 3x3 x 3; the 1x1 is a matmul): forward 5
  # + input gradients 4 (none for the image) in both, + 5 kernel gradients
  # only in XLA's form; the im2col form builds its patches by concatenation.
  assert cpu['convolution'] == 9 and xla['convolution'] == 14, (cpu, xla)
  assert cpu['concatenate'] > 0 == xla['concatenate']
  # The max pool's gradient: taps, no select-and-scatter.
  assert cpu['select_and_scatter'] == 0 and xla['select_and_scatter'] == 1
  # BatchNorm: two reductions forward and two backward each (6 BNs), where
  # autodiff of flax's arithmetic makes more.
  assert cpu['reduce'] < xla['reduce'], (cpu, xla)


def test_switches_resolve_on_cpu(monkeypatch):
  assert layers.conv_filter_grad_impl() == 'im2col'
  assert pooling.maxpool_impl() == 'taps'
  assert batchnorm.batchnorm_impl() == 'fused'
  monkeypatch.setattr(layers, 'CONV_FILTER_GRAD_IMPL', 'xla')
  monkeypatch.setattr(pooling, 'MAXPOOL_IMPL', 'xla')
  monkeypatch.setattr(batchnorm, 'BATCHNORM_IMPL', 'flax')
  assert layers.conv_filter_grad_impl() == 'xla'
  assert pooling.maxpool_impl() == 'xla'
  assert batchnorm.batchnorm_impl() == 'flax'
  assert layers.conv_filter_grad_impl('auto') == 'im2col'
  for fn in (layers.conv_filter_grad_impl, pooling.maxpool_impl,
             batchnorm.batchnorm_impl):
    with pytest.raises(ValueError, match='known'):
      fn('winograd')


# ---------------------------------------------------------------------------
# Max pool: gradient from taps, first maximum in window order.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(2, 12, 12, 5), (2, 11, 9, 4)])
@pytest.mark.parametrize('pool', ['s2', 'ceil', 'vgg'])
def test_max_pool_taps_gradient_equals_xla(monkeypatch, shape, pool):
  # ReLU'd and rounded: many windows with tied maxima (all zero, or equal).
  x = jax.random.normal(jax.random.key(1), shape)
  x = jnp.round(jax.nn.relu(x) * 2) / 2
  fn = {'s2': pooling.max_pool_3x3_s2, 'ceil': pooling.max_pool_3x3_s2_ceil,
        'vgg': lambda x: pooling.max_pool(x, (2, 2), (2, 2), ((0, 0),) * 2)}[
            pool]

  def run(impl):
    monkeypatch.setattr(pooling, 'MAXPOOL_IMPL', impl)

    def loss(x):
      y = fn(x)
      return jnp.sum(y * _weights(y)), y

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(x)

  (_, y), g = run('taps')
  (_, y_ref), g_ref = run('xla')
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(g, g_ref)


# ---------------------------------------------------------------------------
# BatchNorm: hand-written training gradient.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batchnorm_equals_flax(dtype):
  x = jax.random.normal(jax.random.key(0), (4, 5, 3, 8)) * 3 + 1
  kwargs = dict(momentum=0.9, epsilon=1e-5, dtype=dtype)
  ref = nn.BatchNorm(use_running_average=False, **kwargs)
  mine = batchnorm.BatchNorm(use_running_average=False, **kwargs)
  ref_vars = ref.init(jax.random.key(1), x)
  mine_vars = mine.init(jax.random.key(1), x)
  # Same variables (names, shapes, dtypes, initial values).
  assert jax.tree.structure(ref_vars) == jax.tree.structure(mine_vars)
  jax.tree.map(np.testing.assert_array_equal, ref_vars, mine_vars)
  variables = {'params': {'scale': jnp.linspace(0.5, 2, 8),
                          'bias': jnp.linspace(-1, 1, 8)},
               'batch_stats': {'mean': jnp.linspace(0, 1, 8),
                               'var': jnp.linspace(1, 2, 8)}}

  def run(module):
    def loss(params, x):
      y, updates = module.apply(dict(variables, params=params), x,
                                mutable=['batch_stats'])
      y32 = jax.nn.relu(y.astype(jnp.float32))
      return jnp.sum(y32 * _weights(y32)), (y, updates)
    return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        variables['params'], x)

  (_, (y, updates)), grads = run(mine)
  (_, (y_ref, updates_ref)), grads_ref = run(ref)
  assert y.dtype == y_ref.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(y_ref, np.float32))
  jax.tree.map(np.testing.assert_array_equal, updates, updates_ref)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-5), grads, grads_ref)
  # Eval mode is flax's own (constructor flag or call argument).
  for module, kw in ((mine.clone(use_running_average=True), {}),
                     (mine.clone(use_running_average=None),
                      {'use_running_average': True})):
    np.testing.assert_array_equal(
        module.apply(variables, x, **kw),
        ref.clone(use_running_average=True).apply(variables, x))


def test_batchnorm_statistics_cotangents():
  """The (mean, var) outputs' own gradient, should anything differentiate
  through the running averages."""
  x = jax.random.normal(jax.random.key(2), (3, 4, 5, 6)) + 0.5
  scale, bias = jnp.linspace(0.5, 2, 6), jnp.linspace(-1, 1, 6)

  def ref(x, scale, bias):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.maximum(0., jnp.mean(x * x, (0, 1, 2)) - mean * mean)
    y = (x - mean) * (lax.rsqrt(var + 1e-5) * scale) + bias
    return y, mean, var

  def loss(fn):
    def f(x, scale, bias):
      y, mean, var = fn(x, scale, bias)
      return jnp.sum(y * _weights(y)) + jnp.sum(mean * 3.) + jnp.sum(var ** 2)
    return jax.grad(f, (0, 1, 2))(x, scale, bias)

  mine = functools.partial(
      lambda x, s, b: batchnorm.batch_norm_train(x, s, b, 1e-5))
  for g, g_ref in zip(loss(mine), loss(ref)):
    _close(g, g_ref)


def test_model_norm_is_the_cpu_batchnorm():
  norm = batchnorm.make_norm(True, jnp.float32)(name='bn1')
  assert isinstance(norm, batchnorm.BatchNorm)
  assert isinstance(norm, nn.BatchNorm)
