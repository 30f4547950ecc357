"""Building blocks shared by the classification backbones.

Everything here is chosen so that torchvision weights reproduce torchvision
outputs: explicit symmetric padding (Flax 'SAME' pads stride-2 layers on one
side only), BatchNorm with epsilon 1e-5 and Flax momentum 0.9 (PyTorch 0.1),
and the output-stride/dilation schedule of torchvision's
``replace_stride_with_dilation``.
"""
import functools
from typing import Any, Callable, List, Sequence, Tuple

import flax.linen as nn
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


def make_conv(dtype: Dtype, param_dtype: Dtype = jnp.float32,
              use_bias: bool = False,
              kernel_init=conv_kernel_init) -> Callable[..., nn.Conv]:
  return functools.partial(
      nn.Conv, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=kernel_init)


def make_norm(train: bool, dtype: Dtype,
              param_dtype: Dtype = jnp.float32) -> Callable[..., nn.BatchNorm]:
  # No axis_name: training is SPMD jit over a mesh, the batch mean is global.
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      dtype=dtype, param_dtype=param_dtype)


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
  """torchvision ResNet stem pool: 3x3, stride 2, padding 1 (pads with -inf)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def max_pool_3x3_s2_ceil(x: jnp.ndarray) -> jnp.ndarray:
  """PyTorch MaxPool2d(3, 2, padding=0, ceil_mode=True): pads only at the end."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - 3) // 2) + 1
    pads.append((0, max((out - 1) * 2 + 3 - size, 0)))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=tuple(pads))


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
