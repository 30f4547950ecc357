"""Pooling: max pools (on CPU with their gradient from taps) and average pools."""
import functools
import os
from typing import Optional, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxres.models import switches

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
  return switches.resolve('max pool', impl or MAXPOOL_IMPL, MAXPOOL_IMPLS)


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
