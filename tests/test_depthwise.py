"""The depthwise convolution's two forms (layers.DepthwiseConv) and its switch.

Both forms must be the same function (outputs and both gradients) at every
stride and dilation the models use, with the models' padding; on CPU the
switch must pick the taps form. That last check is structural (the lowered
program of a MobileNetV2 block holds no grouped convolution), never a timing.
"""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models import mobilenetv2

# Odd sizes so strided and dilated windows hit the borders unevenly.
SHAPE = (2, 11, 9, 6)


def _inputs(seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, SHAPE, jnp.float32)
  kernel = jax.random.normal(kk, (3, 3, 1, SHAPE[-1]), jnp.float32)
  return x, kernel


def _loss(conv_fn, stride, dilation):
  pads = layers.padding(3, dilation)

  def loss(x, kernel):
    y = conv_fn(x, kernel, (stride, stride), pads, (dilation, dilation))
    # A fixed non-uniform cotangent, so every output position counts.
    weights = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
    return jnp.sum(y * weights), y

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('dilation', [1, 2, 4])
def test_forms_equal_outputs_and_gradients(stride, dilation):
  x, kernel = _inputs()
  (_, y_taps), (gx_taps, gk_taps) = _loss(
      layers.depthwise_conv_taps, stride, dilation)(x, kernel)
  (_, y_grp), (gx_grp, gk_grp) = _loss(
      layers.depthwise_conv_grouped, stride, dilation)(x, kernel)
  out = (SHAPE[1] - 1) // stride + 1, (SHAPE[2] - 1) // stride + 1
  assert y_taps.shape == y_grp.shape == (SHAPE[0], *out, SHAPE[3])
  for a, b in ((y_taps, y_grp), (gx_taps, gx_grp), (gk_taps, gk_grp)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((2, 0), (1, 1))])
def test_module_matches_flax_grouped_conv(padding):
  """Same parameter names, shapes and initial values as nn.Conv, same output."""
  x, _ = _inputs(1)
  c = SHAPE[-1]
  ref = nn.Conv(c, (3, 3), (2, 2), padding=padding, feature_group_count=c,
                use_bias=True, kernel_init=layers.conv_kernel_init)
  ref_vars = ref.init(jax.random.key(3), x)
  for impl in ('taps', 'grouped'):
    mod = layers.DepthwiseConv((3, 3), (2, 2), padding=padding, use_bias=True,
                               impl=impl)
    mod_vars = mod.init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, mod_vars) == jax.tree.map(
        jnp.shape, ref_vars)
    jax.tree.map(np.testing.assert_array_equal, mod_vars, ref_vars)
    mod_vars = jax.tree.map(lambda v: v + 0.5, mod_vars)  # A non-zero bias.
    np.testing.assert_allclose(mod.apply(mod_vars, x),
                               ref.apply(mod_vars, x), rtol=1e-5, atol=1e-5)


def test_bfloat16_taps_close_to_grouped():
  x, kernel = _inputs(2)
  x, kernel = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  args = ((1, 1), layers.padding(3, 2), (2, 2))
  taps = layers.depthwise_conv_taps(x, kernel, *args)
  grouped = layers.depthwise_conv_grouped(x, kernel, *args)
  assert taps.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(taps, np.float32),
                             np.asarray(grouped, np.float32),
                             rtol=2e-2, atol=5e-2)


def test_switch(monkeypatch):
  assert jax.default_backend() == 'cpu'
  assert layers.depthwise_impl() == 'taps'  # The CPU choice.
  assert layers.depthwise_impl('grouped') == 'grouped'
  monkeypatch.setattr(layers, 'DEPTHWISE_IMPL', 'grouped')
  assert layers.depthwise_impl() == 'grouped'
  assert layers.depthwise_impl('auto') == 'taps'
  with pytest.raises(ValueError, match='taps'):
    layers.depthwise_impl('winograd')


def _group_counts(impl, monkeypatch, dilation=1):
  """feature_group_count of every convolution in a block's lowered train step."""
  monkeypatch.setattr(layers, 'DEPTHWISE_IMPL', impl)
  block = mobilenetv2.InvertedResidual(
      8, 6, conv=layers.make_conv(jnp.float32),
      norm=batchnorm.make_norm(True, jnp.float32),
      depthwise_conv=layers.make_depthwise_conv(jnp.float32), strides=2,
      dilation=dilation)
  x = jnp.ones((2, 8, 8, 8))
  variables = block.init(jax.random.key(0), x)

  def loss(params):
    y, _ = block.apply(dict(variables, params=params), x,
                       mutable=['batch_stats'])
    return jnp.sum(y ** 2)

  text = jax.jit(jax.grad(loss)).lower(variables['params']).as_text()
  return [int(n) for n in re.findall(r'feature_group_count = (\d+)', text)]


def test_cpu_block_has_no_grouped_convolution(monkeypatch):
  # The detector works: the grouped form shows up as a 48-group convolution.
  assert max(_group_counts('grouped', monkeypatch)) == 48
  # On CPU the default lowers forward and backward without any (and, with
  # the 1x1 convolutions as matmuls, without any convolution at all).
  for dilation in (1, 2):
    counts = _group_counts('auto', monkeypatch, dilation)
    assert all(n == 1 for n in counts), counts


# ---------------------------------------------------------------------------
# The 1x1 convolution's switch (layers.conv_general_dilated, via make_conv).
# ---------------------------------------------------------------------------

def _pointwise_grads(impl, monkeypatch, stride, padding='VALID'):
  monkeypatch.setattr(layers, 'POINTWISE_IMPL', impl)
  conv = layers.make_conv(jnp.float32, use_bias=True)(
      7, (1, 1), (stride, stride), padding=padding)
  x, _ = _inputs(4)
  params = conv.init(jax.random.key(5), x)

  def loss(params, x):
    y = conv.apply(params, x)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size)).reshape(y.shape)), y

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  return fn(params, x), fn.lower(params, x).as_text()


@pytest.mark.parametrize('stride,padding', [(1, 'VALID'), (2, 0),
                                            (2, ((0, 0), (0, 0)))])
def test_pointwise_forms_equal(monkeypatch, stride, padding):
  (_, y_dot), grads_dot = _pointwise_grads('dot', monkeypatch, stride, padding)[0]
  (_, y_conv), grads_conv = _pointwise_grads('conv', monkeypatch, stride,
                                             padding)[0]
  np.testing.assert_allclose(y_dot, y_conv, rtol=1e-5, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-5), grads_dot, grads_conv)


def test_cpu_pointwise_is_a_matmul(monkeypatch):
  assert layers.pointwise_impl() == 'dot'
  _, text = _pointwise_grads('auto', monkeypatch, 2)
  assert 'convolution' not in text and 'dot_general' in text
  _, text = _pointwise_grads('conv', monkeypatch, 2)
  assert 'convolution' in text
  with pytest.raises(ValueError, match='dot'):
    layers.pointwise_impl('fft')
