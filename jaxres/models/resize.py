"""Bilinear resizing of NHWC maps with PyTorch's two sampling conventions.

``jax.image.resize`` samples at half-pixel centres, which is PyTorch's
``align_corners=False``. The reference segmentation models (bubbliiiing) use
``align_corners=True`` everywhere, where the corner pixels of input and output
coincide; that needs its own resize, done here as one small interpolation
matrix per spatial axis.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] weights of 1-D linear interpolation, corners aligned.

  Output pixel i samples the input at i * (in - 1) / (out - 1); an output of
  size 1 samples input pixel 0, as PyTorch does.
  """
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  src = np.arange(out_size, dtype=np.float64) * scale
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lo), 1.0 - frac)
  np.add.at(weights, (rows, hi), frac)
  return weights


def resize_bilinear(x: jax.Array, size: Sequence[int],
                    align_corners: bool) -> jax.Array:
  """Resizes ``x`` [B, H, W, C] to [B, size[0], size[1], C], keeping its dtype.

  Matches ``torch.nn.functional.interpolate(mode='bilinear',
  align_corners=align_corners)`` for up- and downsampling (no antialiasing).
  """
  out_h, out_w = (int(s) for s in size)
  batch, in_h, in_w, channels = x.shape
  if (in_h, in_w) == (out_h, out_w):
    return x
  if not align_corners:
    # Without antialias, jax's triangle kernel drops out-of-range taps and
    # renormalises, which equals PyTorch's clamping of source coordinates.
    y = jax.image.resize(x, (batch, out_h, out_w, channels), 'bilinear',
                         antialias=False)
    return y.astype(x.dtype)
  # Interpolate in float32 at full matmul precision (TPU/GPU default precision
  # would round the weights), then return to the input dtype.
  w_h = jnp.asarray(_align_corners_matrix(in_h, out_h), jnp.float32)
  w_w = jnp.asarray(_align_corners_matrix(in_w, out_w), jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  y = jnp.einsum('oh,bhwc->bowc', w_h, x.astype(jnp.float32), precision=hp)
  y = jnp.einsum('pw,bowc->bopc', w_w, y, precision=hp)
  return y.astype(x.dtype)
