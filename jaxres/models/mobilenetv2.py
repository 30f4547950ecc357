"""MobileNetV2 (torchvision numerics) with output stride 8/16/32.

Module names mirror torchvision state-dict keys: replace every '/' and '_'
of a flax path with '.' to get the torch key prefix:
  features_0_0, features_0_1          features.0.0 (conv), features.0.1 (bn)
  features_{k}/conv_0_0, conv_0_1     features.{k}.conv.0.0, .conv.0.1
  features_{k}/conv_1_0, conv_1_1     (expand blocks: depthwise conv + bn)
  features_{k}/conv_2, conv_3         (expand blocks: project conv + bn)
  features_1/conv_1, conv_2           (block 1, expand ratio 1: project conv + bn)
  features_18_0, features_18_1        final 1x1 conv + bn (classifier only)
  classifier_1                        classifier.1 (Linear; classifier.0 is dropout)
Depthwise torch weight (C, 1, kh, kw) -> kernel (kh, kw, 1, C).
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models import pooling

ModuleDef = Any

# (expand ratio t, channels c, repeats n, first stride s).
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# Index in torchvision `features` after which each feature map is taken.
FEATURE_BLOCKS = {1: 'stride2', 3: 'stride4', 6: 'stride8', 13: 'stride16',
                  17: 'stride32'}


def make_divisible(v: float, divisor: int = 8) -> int:
  """Rounds to a multiple of `divisor`, never below 90% of `v` (torchvision)."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


class InvertedResidual(nn.Module):
  features: int
  expand_ratio: int
  conv: ModuleDef
  norm: ModuleDef
  depthwise_conv: ModuleDef
  strides: int = 1
  dilation: int = 1
  use_residual: bool = False

  @nn.compact
  def __call__(self, x):
    hidden = int(round(x.shape[-1] * self.expand_ratio))
    s, d = self.strides, self.dilation
    i = 0
    y = x
    if self.expand_ratio != 1:
      y = self.conv(hidden, (1, 1), padding='VALID', name='conv_0_0')(y)
      y = nn.relu6(self.norm(name='conv_0_1')(y))
      i = 1
    # Parameters as nn.Conv(hidden, (3, 3), feature_group_count=hidden).
    y = self.depthwise_conv((3, 3), (s, s), padding=layers.padding(3, d),
                            kernel_dilation=(d, d), name=f'conv_{i}_0')(y)
    y = nn.relu6(self.norm(name=f'conv_{i}_1')(y))
    y = self.conv(self.features, (1, 1), padding='VALID', name=f'conv_{i + 1}')(y)
    y = self.norm(name=f'conv_{i + 2}')(y)
    return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
  """MobileNetV2 classifier, or backbone returning a feature dict if num_classes is None.

  The backbone stops after features[17] (320 channels at width 1.0): the
  final 1x1 conv to 1280 exists only with a classifier.
  """
  num_classes: Optional[int] = 1000
  output_stride: int = 32
  width_mult: float = 1.0
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    layers.check_output_stride(self.output_stride)
    conv = layers.make_conv(self.dtype, self.param_dtype)
    norm = batchnorm.make_norm(train, self.dtype, self.param_dtype)
    depthwise_conv = layers.make_depthwise_conv(self.dtype, self.param_dtype)

    x = conv(make_divisible(32 * self.width_mult), (3, 3), (2, 2),
             padding=layers.padding(3), name='features_0_0')(x)
    x = nn.relu6(norm(name='features_0_1')(x))

    blocks = [(t, make_divisible(c * self.width_mult), s if j == 0 else 1)
              for t, c, n, s in INVERTED_RESIDUAL_SETTING for j in range(n)]
    schedule = layers.dilation_schedule(
        [s for _, _, s in blocks], self.output_stride, input_stride=2)
    features = {}
    for k, ((t, c, nominal_stride), (s, d, _)) in enumerate(
        zip(blocks, schedule), start=1):
      # Decided on the nominal stride, as torchvision builds the block before
      # any dilation is applied.
      use_residual = nominal_stride == 1 and x.shape[-1] == c
      x = InvertedResidual(c, t, conv=conv, norm=norm,
                           depthwise_conv=depthwise_conv, strides=s, dilation=d,
                           use_residual=use_residual, name=f'features_{k}')(x)
      if k in FEATURE_BLOCKS:
        features[FEATURE_BLOCKS[k]] = x

    if self.num_classes is None:
      return features
    last_channel = make_divisible(1280 * max(1.0, self.width_mult))
    x = conv(last_channel, (1, 1), padding='VALID', name='features_18_0')(x)
    x = nn.relu6(norm(name='features_18_1')(x))
    x = pooling.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=self.param_dtype,
                    kernel_init=layers.dense_kernel_init, name='classifier_1')(x)


MODELS = {
    'mobilenet_v2': functools.partial(MobileNetV2),
}


# ---------------------------------------------------------------------------
# PyTorch weights (read by jaxres.weights): torchvision's names follow the
# generic rule (features_3/conv_1_0 -> features.3.conv.1.0).
# ---------------------------------------------------------------------------

TORCH_SIGNATURE = 'features_1/conv_0_0'  # A flax module only MobileNetV2 has.
CLASSIFIER = 'classifier_1'  # Gives the class logits.


def bubbliiiing_torch_name(name: str, kind: str) -> str:
  """bubbliiiing's MobileNetV2: each block's ``conv`` is one flat Sequential.

  torchvision nests conv+BN+ReLU6 triples (conv.I.J, I < number of triples)
  and then lists the linear projection conv and its BN (conv.I). Flat index:
  3 * I + J for a triple; 3 * I for the projection conv and 3 * I - 2 for
  its BN (the projection conv's I equals the number of triples).
  """
  block, found, index = name.partition('.conv.')
  if not found or not block.startswith('features.'):
    return name
  i, *j = (int(n) for n in index.split('.'))
  if j:
    flat = 3 * i + j[0]
  else:
    flat = 3 * i if kind == 'conv' else 3 * i - 2
  return f'{block}.conv.{flat}'


# Files holding a MobileNetV2 (more in deeplab.py).
TORCH_LAYOUTS = (
    dict(description='torchvision MobileNetV2', prefix='',
         classifier_keys=('features.18.*', 'classifier.*')),
    dict(description='bubbliiiing MobileNetV2 (ImageNet)', prefix='',
         torch_name=bubbliiiing_torch_name,
         classifier_keys=('features.18.*', 'classifier.*')),
)
