"""Building blocks shared by the classification backbones.

Everything here is chosen so that torchvision weights reproduce torchvision
outputs: explicit symmetric padding (Flax 'SAME' pads stride-2 layers on one
side only), BatchNorm with epsilon 1e-5 and Flax momentum 0.9 (PyTorch 0.1),
and the output-stride/dilation schedule of torchvision's
``replace_stride_with_dilation``.
"""
import functools
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

ModuleDef = Any
Dtype = Any

OUTPUT_STRIDES = (8, 16, 32)

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)): variance
# 1/(3 fan_in). For stacks of convs without BatchNorm (the UNet decoder) the
# fan_out He init above grows activations at every layer where fan_out > fan_in.
torch_default_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')
# torchvision MobileNetV2 and VGG: nn.init.normal_(linear.weight, 0, 0.01).
dense_kernel_init = nn.initializers.normal(stddev=0.01)


def padding(kernel_size: int, dilation: int = 1) -> Tuple[Tuple[int, int], ...]:
  """Symmetric padding that keeps the size of a stride-1 conv (PyTorch style)."""
  p = dilation * (kernel_size - 1) // 2
  return ((p, p), (p, p))


def _resolve(what: str, impl: str, choices: Tuple[str, str, str]) -> str:
  """choices = ('auto', CPU form, XLA's form): 'auto' picks by backend.

  Called at trace time, so the choice follows the default backend of the
  process; a jitted function keeps the choice it was traced with.
  """
  if impl not in choices:
    raise ValueError(f'Unknown {what} implementation {impl!r}; known: '
                     f'{", ".join(choices)}.')
  if impl == 'auto':
    return choices[1] if jax.default_backend() == 'cpu' else choices[2]
  return impl


# ---------------------------------------------------------------------------
# Pointwise (1x1) convolution: on CPU a matrix product.
# ---------------------------------------------------------------------------

POINTWISE_IMPLS = ('auto', 'dot', 'conv')
# 'auto': on CPU a 1x1 convolution (any stride, no padding, one group) runs as
# dot_general over the channel axis, whose transposes are dot_generals too;
# elsewhere XLA's convolution. XLA:CPU compiles the filter gradient of a 1x1
# convolution as a convolution that is 3-7x slower than the same product as a
# matmul (ResNet-50 shapes; experiments/BENCHMARKS.md). Same arithmetic, the
# sums in another order. Overridden like DEPTHWISE_IMPL: JAXRES_POINTWISE_IMPL
# at import, or this variable before a step is traced.
POINTWISE_IMPL = os.environ.get('JAXRES_POINTWISE_IMPL', 'auto')
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def pointwise_impl(impl: Optional[str] = None) -> str:
  """Resolves 'auto' (or None: the module setting) to 'dot' or 'conv'."""
  return _resolve('pointwise convolution', impl or POINTWISE_IMPL, POINTWISE_IMPLS)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """lax.conv_general_dilated; a 1x1 NHWC convolution as a matmul on CPU.

  Given to nn.Conv by make_conv, so parameters are nn.Conv's own.
  """
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  pointwise = (
      lhs.ndim == 4 and dn == _NHWC and rhs.shape[:2] == (1, 1)
      and feature_group_count == 1 and not kwargs
      and (padding == 'VALID' if isinstance(padding, str)
           else all(tuple(p) == (0, 0) for p in padding))
      and all(d == 1 for d in (lhs_dilation or (1, 1))))
  if not pointwise or pointwise_impl() != 'dot':
    if (not pointwise and lhs.ndim == 4 and dn == _NHWC
        and feature_group_count == 1 and not kwargs and precision is None
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and conv_filter_grad_impl() == 'im2col'):
      pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2],
                               window_strides, rhs_dilation or (1, 1))
      return conv_im2col_grad(lhs, rhs, tuple(window_strides),
                              tuple(tuple(p) for p in pads),
                              tuple(rhs_dilation or (1, 1)))
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        **kwargs)
  sh, sw = window_strides
  if (sh, sw) != (1, 1):
    lhs = lhs[:, ::sh, ::sw, :]
  if precision is not None:
    return lax.dot_general(lhs, rhs[0, 0], (((3,), (0,)), ((), ())),
                           precision=precision)
  return pointwise_matmul(lhs, rhs[0, 0])


_CHANNELS = (((3,), (0,)), ((), ()))
_PIXELS = (((0, 1, 2), (0, 1, 2)), ((), ()))


@jax.custom_vjp
def pointwise_matmul(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, Cin] x [Cin, Cout]: a 1x1 convolution as a matrix product."""
  return lax.dot_general(x, kernel, _CHANNELS)


def _pointwise_matmul_fwd(x, kernel):
  return pointwise_matmul(x, kernel), (x, kernel)


def _pointwise_matmul_bwd(residuals, g):
  x, kernel = residuals
  dx = lax.dot_general(g, kernel, (((3,), (1,)), ((), ())))
  # The kernel gradient sums over pixels; XLA:CPU hands the matmul one operand
  # transposed to [C, pixels], a copy fused with that operand's producer.
  # Transposing the operand with fewer channels halves that copy or better
  # in ResNet bottlenecks (1.16x on the whole ResNet-50 step).
  if x.shape[-1] <= g.shape[-1]:
    dk = lax.dot_general(x, g, _PIXELS)
  else:
    dk = lax.dot_general(g, x, _PIXELS).T
  return dx, dk.astype(kernel.dtype)


pointwise_matmul.defvjp(_pointwise_matmul_fwd, _pointwise_matmul_bwd)


# ---------------------------------------------------------------------------
# Filter gradient of a k x k convolution: on CPU an explicit im2col matmul.
# ---------------------------------------------------------------------------

CONV_FILTER_GRAD_IMPLS = ('auto', 'im2col', 'xla')
# 'auto': on CPU the kernel gradient of a k x k (k > 1) NHWC convolution with
# one group is computed as one matrix product: the k*k shifted (strided,
# dilated) slices of the input concatenated on the channel axis, [pixels,
# k*k*Cin] in NHWC order, against the output gradient [pixels, Cout]. XLA:CPU
# otherwise runs it as a convolution with one operand transposed to
# [Cin, H, W, N] (experiments/BENCHMARKS.md). Forward and input gradient stay
# XLA's convolution. Elsewhere ('xla') XLA's own filter gradient. Overridden
# by JAXRES_CONV_FILTER_GRAD_IMPL at import, or this variable before tracing.
CONV_FILTER_GRAD_IMPL = os.environ.get('JAXRES_CONV_FILTER_GRAD_IMPL', 'auto')


def conv_filter_grad_impl(impl: Optional[str] = None) -> str:
  """Resolves 'auto' (or None: the module setting) to 'im2col' or 'xla'."""
  return _resolve('convolution filter-gradient', impl or CONV_FILTER_GRAD_IMPL, CONV_FILTER_GRAD_IMPLS)


def _xla_conv(x, kernel, strides, pads, dilation):
  return lax.conv_general_dilated(x, kernel, strides, pads,
                                  rhs_dilation=dilation,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def im2col_rows(x, kernel_hw, strides, pads, dilation):
  """Per kernel row i, [B, OH, OW, kw*C]: the conv's input windows of that
  row, tap-major then channel (HWIO order), NHWC-contiguous."""
  kh, kw = kernel_hw
  (sh, sw), (dh, dw) = strides, dilation
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), tuple(pads[0]) + (0,), tuple(pads[1]) + (0,),
               (0, 0, 0)))
  b, h, w, c = x.shape
  oh = (h - dh * (kh - 1) - 1) // sh + 1
  ow = (w - dw * (kw - 1) - 1) // sw + 1
  return [jnp.concatenate(
      [lax.slice(x, (0, i * dh, j * dw, 0),
                 (b, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1,
                  c), (1, sh, sw, 1)) for j in range(kw)], axis=-1)
          for i in range(kh)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_im2col_grad(x, kernel, strides, pads, dilation):
  """XLA's NHWC/HWIO convolution; its kernel gradient an im2col matmul."""
  return _xla_conv(x, kernel, strides, pads, dilation)


def _conv_im2col_fwd(x, kernel, strides, pads, dilation):
  return _xla_conv(x, kernel, strides, pads, dilation), (x, kernel)


def _conv_im2col_bwd(strides, pads, dilation, residuals, g):
  x, kernel = residuals
  _, vjp_x = jax.vjp(
      lambda x: _xla_conv(x, kernel, strides, pads, dilation), x)
  dx, = vjp_x(g)
  kh, kw, cin, cout = kernel.shape
  acc = jnp.promote_types(g.dtype, jnp.float32)
  # One matmul per kernel row, [Cout, pixels] @ [pixels, kw*Cin]: the output
  # gradient is the operand transposed to [Cout, pixels] (it has the fewer
  # channels), the patches are read in NHWC order. With few output channels
  # that transpose is done once, explicitly, for the kh products (measured
  # per layer: better up to 128 output channels, worse at 512).
  pixels = (((0, 1, 2), (0, 1, 2)), ((), ()))
  gt = g.reshape(-1, cout).T if cout <= 128 else None
  rows = []
  for patches in im2col_rows(x, (kh, kw), strides, pads, dilation):
    if gt is None:
      rows.append(lax.dot_general(g, patches, pixels,
                                  preferred_element_type=acc))
    else:
      rows.append(lax.dot_general(gt, patches.reshape(-1, kw * cin),
                                  (((1,), (0,)), ((), ())),
                                  preferred_element_type=acc))
  dk = jnp.concatenate(rows, axis=1).T.reshape(kh, kw, cin, cout)
  return dx, dk.astype(kernel.dtype)


conv_im2col_grad.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


def make_conv(dtype: Dtype, param_dtype: Dtype = jnp.float32,
              use_bias: bool = False,
              kernel_init=conv_kernel_init) -> Callable[..., nn.Conv]:
  return functools.partial(
      nn.Conv, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=kernel_init, conv_general_dilated=conv_general_dilated)


# ---------------------------------------------------------------------------
# Depthwise convolution: the one place that decides how it is computed.
# ---------------------------------------------------------------------------

DEPTHWISE_IMPLS = ('auto', 'taps', 'grouped')
# 'auto': the sum of the kernel's shifted taps on CPU, XLA's grouped
# convolution (feature_group_count = channels) on GPU and TPU. XLA:CPU compiles
# a grouped convolution poorly: forward and input gradient run through a
# generic grouped kernel, and the filter gradient becomes a dense C x C
# convolution (94x the FLOPs). The taps form is nine strided slices times a
# per-channel weight, which XLA fuses into one loop nest per direction; on
# this project's CPU it is 5-70x faster for one layer forward + backward and
# equal to 1e-7 (experiments/BENCHMARKS.md). Accelerators keep cuDNN's /
# the TPU's native depthwise kernels until a GPU row says otherwise.
# Overridden by JAXRES_DEPTHWISE_IMPL at import, by assigning this variable
# before a step is traced, or per module with DepthwiseConv(impl=...).
DEPTHWISE_IMPL = os.environ.get('JAXRES_DEPTHWISE_IMPL', 'auto')


def depthwise_impl(impl: Optional[str] = None) -> str:
  """Resolves 'auto' (or None: the module setting) to 'taps' or 'grouped'."""
  return _resolve('depthwise convolution', impl or DEPTHWISE_IMPL,
                  DEPTHWISE_IMPLS)


PaddingLike = Union[str, int, Sequence[Tuple[int, int]]]


def _explicit_padding(padding: PaddingLike, in_hw, kernel_hw, strides,
                      dilation) -> List[Tuple[int, int]]:
  if isinstance(padding, str):
    window = [d * (k - 1) + 1 for k, d in zip(kernel_hw, dilation)]
    return [tuple(p) for p in lax.padtype_to_pads(
        in_hw, window, strides, padding)]
  if isinstance(padding, int):
    return [(padding, padding)] * 2
  return [(lo, hi) for lo, hi in padding]


def depthwise_conv_taps(x: jnp.ndarray, kernel: jnp.ndarray,
                        strides: Sequence[int],
                        padding: Sequence[Tuple[int, int]],
                        dilation: Sequence[int]) -> jnp.ndarray:
  """Depthwise conv of NHWC `x` with a (kh, kw, 1, C) kernel, as a sum of taps.

  Output (i, j) is sum over (a, b) of x_padded[i*s + a*d, j*s + b*d] *
  kernel[a, b], i.e. exactly the grouped convolution, accumulated in float32
  (or wider) and cast back to the input dtype.
  """
  kh, kw = kernel.shape[:2]
  (sh, sw), (dh, dw) = strides, dilation
  (pt, pb), (pl, pr) = padding
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  b, h, w, c = x.shape
  oh = (h - dh * (kh - 1) - 1) // sh + 1
  ow = (w - dw * (kw - 1) - 1) // sw + 1
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  out = None
  for i in range(kh):
    for j in range(kw):
      start = (0, i * dh, j * dw, 0)
      limit = (b, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, c)
      tap = lax.slice(x, start, limit, (1, sh, sw, 1)).astype(acc_dtype)
      term = tap * kernel[i, j, 0].astype(acc_dtype)
      out = term if out is None else out + term
  return out.astype(x.dtype)


def depthwise_conv_grouped(x: jnp.ndarray, kernel: jnp.ndarray,
                           strides: Sequence[int],
                           padding: Sequence[Tuple[int, int]],
                           dilation: Sequence[int]) -> jnp.ndarray:
  """The same convolution as XLA's grouped convolution (one group a channel)."""
  return lax.conv_general_dilated(
      x, kernel, tuple(strides), tuple(padding), rhs_dilation=tuple(dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


class DepthwiseConv(nn.Module):
  """Depthwise 2D convolution (channel multiplier 1) on NHWC inputs.

  Its parameters are those of ``nn.Conv(C, kernel_size,
  feature_group_count=C)``: 'kernel' (kh, kw, 1, C) and, with use_bias,
  'bias' (C,), created with the same initialisers and rngs, so weight import
  and initial values are unchanged. ``impl`` (None: DEPTHWISE_IMPL) picks the
  computation; see depthwise_impl.
  """
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  padding: PaddingLike = 'SAME'
  kernel_dilation: Tuple[int, int] = (1, 1)
  use_bias: bool = False
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Any] = conv_kernel_init
  bias_init: Callable[..., Any] = nn.initializers.zeros
  impl: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        tuple(self.kernel_size) + (1, channels),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (channels,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    pads = _explicit_padding(self.padding, x.shape[1:3], self.kernel_size,
                             self.strides, self.kernel_dilation)
    conv = (depthwise_conv_taps if depthwise_impl(self.impl) == 'taps'
            else depthwise_conv_grouped)
    y = conv(x, kernel, self.strides, pads, self.kernel_dilation)
    return y if bias is None else y + bias


def make_depthwise_conv(dtype: Dtype, param_dtype: Dtype = jnp.float32,
                        use_bias: bool = False,
                        kernel_init=conv_kernel_init
                        ) -> Callable[..., DepthwiseConv]:
  return functools.partial(
      DepthwiseConv, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=kernel_init)


# ---------------------------------------------------------------------------
# BatchNorm: in training on CPU, statistics and gradient written by hand.
# ---------------------------------------------------------------------------

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
  return _resolve('BatchNorm', impl or BATCHNORM_IMPL, BATCHNORM_IMPLS)


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


def drop_path(x: jnp.ndarray, rate: float, rng) -> jnp.ndarray:
  """Stochastic depth on a residual branch: each example's branch is zeroed
  with probability `rate`, the kept ones scaled by 1 / (1 - rate)."""
  if not rate:
    return x
  keep = 1. - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


# ---------------------------------------------------------------------------
# Max pooling: on CPU its gradient as taps.
# ---------------------------------------------------------------------------

MAXPOOL_IMPLS = ('auto', 'taps', 'xla')
# 'auto': on CPU the gradient of a max pool is computed from the window's
# taps: tap t (row-major window order) takes the output gradient where it
# equals the output and no earlier tap did (the first maximum, as XLA's
# select-and-scatter and PyTorch pick), and the taps' strided slices are
# transposed back as pads that XLA fuses into one loop. XLA:CPU otherwise
# lowers the gradient as a variadic reduce-window carrying four s32 index
# arrays the size of the input, then a scatter (~10 % of the ResNet-18 step).
# The forward is XLA's reduce-window either way. Elsewhere ('xla') XLA's own
# gradient. Overridden by JAXRES_MAXPOOL_IMPL at import, or this variable
# before a step is traced.
MAXPOOL_IMPL = os.environ.get('JAXRES_MAXPOOL_IMPL', 'auto')


def maxpool_impl(impl: Optional[str] = None) -> str:
  """Resolves 'auto' (or None: the module setting) to 'taps' or 'xla'."""
  return _resolve('max pool', impl or MAXPOOL_IMPL, MAXPOOL_IMPLS)


def _reduce_window_max(x, window, strides, pads):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + window + (1,),
                           (1,) + strides + (1,),
                           ((0, 0),) + pads + ((0, 0),))


def _pool_taps(xp, window, strides, out_hw):
  b, _, _, c = xp.shape
  (oh, ow), (sh, sw) = out_hw, strides
  return [lax.slice(xp, (0, i, j, 0),
                    (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(window[0]) for j in range(window[1])]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_taps_grad(x, window, strides, pads):
  """NHWC max pool (-inf padding); its gradient computed from taps."""
  return _reduce_window_max(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  y = _reduce_window_max(x, window, strides, pads)
  return y, (x, y)


def _max_pool_bwd(window, strides, pads, residuals, g):
  x, y = residuals
  pad_cfg = ((0, 0, 0),) + tuple(p + (0,) for p in pads) + ((0, 0, 0),)
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), pad_cfg)
  taps_fn = functools.partial(_pool_taps, window=window, strides=strides,
                              out_hw=y.shape[1:3])
  found = None
  cotangents = []
  for tap in taps_fn(xp):
    hit = tap == y
    if found is not None:
      hit = hit & ~found
    found = hit if found is None else found | hit
    cotangents.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
  _, transpose = jax.vjp(taps_fn, xp)
  dxp, = transpose(cotangents)
  (pt, _), (pl, _) = pads
  return (lax.slice(dxp, (0, pt, pl, 0), (x.shape[0], pt + x.shape[1],
                                          pl + x.shape[2], x.shape[3])),)


max_pool_taps_grad.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jnp.ndarray, window: Tuple[int, int], strides: Tuple[int, int],
             pads: Tuple[Tuple[int, int], Tuple[int, int]]) -> jnp.ndarray:
  """nn.max_pool on NHWC with explicit padding; see MAXPOOL_IMPL."""
  window, strides = tuple(window), tuple(strides)
  pads = tuple(tuple(p) for p in pads)
  if maxpool_impl() == 'taps' and jnp.issubdtype(x.dtype, jnp.floating):
    return max_pool_taps_grad(x, window, strides, pads)
  return nn.max_pool(x, window, strides=strides, padding=pads)


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
  """torchvision ResNet stem pool: 3x3, stride 2, padding 1 (pads with -inf)."""
  return max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))


def max_pool_3x3_s2_ceil(x: jnp.ndarray) -> jnp.ndarray:
  """PyTorch MaxPool2d(3, 2, padding=0, ceil_mode=True): pads only at the end."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - 3) // 2) + 1
    pads.append((0, max((out - 1) * 2 + 3 - size, 0)))
  return max_pool(x, (3, 3), (2, 2), tuple(pads))


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Mean over H, W in float32 (the classifier head runs in float32)."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def adaptive_avg_pool(x: jnp.ndarray, output_size: Tuple[int, int]) -> jnp.ndarray:
  """PyTorch ``AdaptiveAvgPool2d`` on NHWC: bin i spans [floor(iH/o), ceil((i+1)H/o))."""
  h, w = x.shape[1:3]
  oh, ow = output_size
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    window = (h // oh, w // ow)
    return nn.avg_pool(x, window, strides=window)

  def bins(size, out):
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]

  rows = [x[:, a:b].mean(axis=1, keepdims=True) for a, b in bins(h, oh)]
  x = jnp.concatenate(rows, axis=1)
  cols = [x[:, :, a:b].mean(axis=2, keepdims=True) for a, b in bins(w, ow)]
  return jnp.concatenate(cols, axis=2)


def check_output_stride(output_stride: int,
                        allowed: Sequence[int] = OUTPUT_STRIDES) -> None:
  if output_stride not in allowed:
    raise ValueError(
        f'output_stride={output_stride!r} is not one of {tuple(allowed)} '
        'for this model.')


def dilation_schedule(strides: Sequence[int], output_stride: int,
                      input_stride: int) -> List[Tuple[int, int, int]]:
  """Turns nominal block strides into (stride, dilation, dilation_after).

  Walks the blocks keeping the current stride (``input_stride`` before the
  first one). A block that would stride once ``output_stride`` is reached
  runs at stride 1 instead: its strided 3x3 conv keeps the previous dilation
  and every later 3x3 conv uses the dilation multiplied by the lost stride.
  ``dilation_after`` is the dilation for 3x3 convs that follow the strided
  one inside the same block (only BasicBlock has such a conv). With this rule
  a dilated net run on the same weights equals the undilated one sampled at
  its stride (checked in tests), and it reproduces torchvision's
  ``replace_stride_with_dilation`` and the bubbliiiing MobileNetV2 schedule.
  """
  check_output_stride(output_stride)
  current, dilation = input_stride, 1
  schedule = []
  for stride in strides:
    if stride > 1 and current >= output_stride:
      schedule.append((1, dilation, dilation * stride))
      dilation *= stride
    else:
      current *= stride
      schedule.append((stride, dilation, dilation))
  return schedule
