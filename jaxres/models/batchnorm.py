"""BatchNorm as the models build it: flax's, with its training gradient
written by hand on CPU.

make_norm gives torchvision's settings (epsilon 1e-5, PyTorch momentum 0.1 =
flax 0.9), so torchvision weights reproduce torchvision outputs.
"""
import functools
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxres.models import switches

Dtype = Any

BATCHNORM_IMPLS = ('auto', 'fused', 'flax')
# 'auto': on CPU a BatchNorm in training (batch statistics) computes its
# forward as flax does (one pass for the sum and the sum of squares, variance
# E[x^2] - E[x]^2 clipped at 0) and its gradient by hand:
#   dx = scale * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)),
#   dscale = sum(dy * xhat), dbias = sum(dy),
# the two sums in one pass over dy and x, instead of the chain of reductions
# and broadcasts autodiff makes of flax's arithmetic (measured 1.4x faster
# for BatchNorm + ReLU forward + backward at 16x56x56x64). Elsewhere ('flax')
# flax's own. Eval mode (running averages) is flax's either way. Overridden
# by JAXRES_BATCHNORM_IMPL at import, or this variable before tracing.
BATCHNORM_IMPL = os.environ.get('JAXRES_BATCHNORM_IMPL', 'auto')


def batchnorm_impl(impl: Optional[str] = None) -> str:
  """Resolves 'auto' (or None: the module setting) to 'fused' or 'flax'."""
  return switches.resolve('BatchNorm', impl or BATCHNORM_IMPL, BATCHNORM_IMPLS)


def _bn_stats(x):
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  # The same arithmetic as flax's _compute_stats (use_fast_variance).
  mean = jnp.sum(x, axes) / n
  mean2 = jnp.sum(x * x, axes) / n
  return mean, jnp.maximum(0.0, mean2 - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """BatchNorm over all but the last axis with batch statistics.

  x in float32 (or wider); returns (y, mean, var), var the biased variance.
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  mean, var = _bn_stats(x)
  rstd = lax.rsqrt(var + epsilon)
  # Same order as flax's _normalize: (x - mean) * (rsqrt(var + eps) * scale).
  y = (x - mean) * (rstd * scale) + bias
  return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, rstd, scale = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x - mean
  xhat = centred * rstd
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * xhat, axes)
  dx = (scale * rstd) * (dy - dbias / n - xhat * (dscale / n))
  # The statistics' own cotangents (zero when they only feed the running
  # averages, as in training).
  dx = dx + dmean / n + dvar * (2.0 / n) * centred
  return dx, dscale, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.BatchNorm):
  """flax.linen.BatchNorm; in training, on CPU, batch_norm_train's gradient.

  The same fields, variables (params 'scale', 'bias'; batch_stats 'mean',
  'var'), initial values and running-average update as nn.BatchNorm. The
  hand-written form is used only where it is the same function: feature axis
  last, no axis_name / mask, float32-or-wider statistics; anything else, eval
  mode, and BATCHNORM_IMPL='flax' run nn.BatchNorm itself.
  """

  @nn.compact
  def __call__(self, x, use_running_average: Optional[bool] = None, *,
               mask: Optional[jnp.ndarray] = None):
    if (nn.merge_param('use_running_average', self.use_running_average,
                       use_running_average)
        or mask is not None or self.axis_name is not None
        or self.axis not in (-1, x.ndim - 1)
        or not (self.use_scale and self.use_bias)
        or not self.use_fast_variance or not self.force_float32_reductions
        or batchnorm_impl() != 'fused'):
      return super().__call__(x, use_running_average, mask=mask)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean',
                            lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable('batch_stats', 'var',
                           lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param('scale', self.scale_init, features, self.param_dtype)
    bias = self.param('bias', self.bias_init, features, self.param_dtype)
    stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
    y, mean, var = batch_norm_train(
        x.astype(stats_dtype), scale.astype(stats_dtype),
        bias.astype(stats_dtype), self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    out_dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
    return y.astype(out_dtype)


def make_norm(train: bool, dtype: Dtype,
              param_dtype: Dtype = jnp.float32) -> Callable[..., nn.BatchNorm]:
  # No axis_name: training is SPMD jit over a mesh, the batch mean is global.
  return functools.partial(
      BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      dtype=dtype, param_dtype=param_dtype)
