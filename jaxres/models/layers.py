"""Building blocks shared by the classification backbones: the convolutions.

Everything here is chosen so that torchvision weights reproduce torchvision
outputs: explicit symmetric padding (Flax 'SAME' pads stride-2 layers on one
side only) and the output-stride/dilation schedule of torchvision's
``replace_stride_with_dilation``. BatchNorm is in batchnorm.py, pooling in
pooling.py; the CPU forms' switches resolve in switches.py.
"""
import functools
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxres.models import switches

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
  return switches.resolve('pointwise convolution', impl or POINTWISE_IMPL,
                          POINTWISE_IMPLS)


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
  return switches.resolve('convolution filter-gradient',
                          impl or CONV_FILTER_GRAD_IMPL, CONV_FILTER_GRAD_IMPLS)


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
  return switches.resolve('depthwise convolution', impl or DEPTHWISE_IMPL,
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


def drop_path(x: jnp.ndarray, rate: float, rng) -> jnp.ndarray:
  """Stochastic depth on a residual branch: each example's branch is zeroed
  with probability `rate`, the kept ones scaled by 1 / (1 - rate)."""
  if not rate:
    return x
  keep = 1. - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


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
