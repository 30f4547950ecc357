"""ResNet v1.5 (torchvision numerics) with output stride 8/16/32.

Module names mirror torchvision state-dict keys; a converter maps them by:
  flax path               torch key prefix
  conv1, bn1              conv1, bn1               (stem)
  layer{i}_{j}/conv{k}    layer{i}.{j}.conv{k}     (k = 1, 2 [, 3])
  layer{i}_{j}/bn{k}      layer{i}.{j}.bn{k}
  layer{i}_{j}/downsample_conv   layer{i}.{j}.downsample.0
  layer{i}_{j}/downsample_bn     layer{i}.{j}.downsample.1
  fc                      fc
Conv 'kernel' = weight.transpose(2, 3, 1, 0); fc 'kernel' = weight.T; BN
'scale'/'bias' in params, 'mean'/'var' in batch_stats.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models import pooling

ModuleDef = Any


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  planes: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1
  dilation_after: int = 1
  groups: int = 1
  width_per_group: int = 64
  zero_init_last_bn: bool = False
  drop_path_rate: float = 0.  # Stochastic depth of the residual branch.
  deterministic: bool = True  # False in training: drop path is active.

  @nn.compact
  def __call__(self, x):
    if self.groups != 1 or self.width_per_group != 64:
      raise ValueError('BasicBlock supports only groups=1, width_per_group=64.')
    s, d, d2 = self.strides, self.dilation, self.dilation_after
    residual = x
    y = self.conv(self.planes, (3, 3), (s, s), padding=layers.padding(3, d),
                  kernel_dilation=(d, d), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), padding=layers.padding(3, d2),
                  kernel_dilation=(d2, d2), name='conv2')(y)
    y = self.norm(name='bn2', scale_init=_last_bn_init(self.zero_init_last_bn))(y)
    y = _drop_path(self, y)
    if s != 1 or x.shape[-1] != self.planes:
      residual = self.conv(self.planes, (1, 1), (s, s), padding='VALID',
                           name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 (ResNet-50/101/152, ResNeXt, Wide)."""
  planes: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1
  dilation_after: int = 1  # No 3x3 conv after the strided one: unused.
  groups: int = 1
  width_per_group: int = 64
  zero_init_last_bn: bool = False
  drop_path_rate: float = 0.  # Stochastic depth of the residual branch.
  deterministic: bool = True  # False in training: drop path is active.

  @nn.compact
  def __call__(self, x):
    s, d = self.strides, self.dilation
    width = int(self.planes * (self.width_per_group / 64.)) * self.groups
    out = self.planes * 4
    residual = x
    y = self.conv(width, (1, 1), padding='VALID', name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(width, (3, 3), (s, s), padding=layers.padding(3, d),
                  kernel_dilation=(d, d), feature_group_count=self.groups,
                  name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(out, (1, 1), padding='VALID', name='conv3')(y)
    y = self.norm(name='bn3', scale_init=_last_bn_init(self.zero_init_last_bn))(y)
    y = _drop_path(self, y)
    if s != 1 or x.shape[-1] != out:
      residual = self.conv(out, (1, 1), (s, s), padding='VALID',
                           name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(residual + y)


def _last_bn_init(zero: bool):
  return nn.initializers.zeros if zero else nn.initializers.ones


def _drop_path(block, y):
  if not block.drop_path_rate or block.deterministic:
    return y
  return layers.drop_path(y, block.drop_path_rate, block.make_rng('dropout'))


class ResNet(nn.Module):
  """ResNet classifier, or backbone returning a feature dict if num_classes is None.

  Features: 'stride2' = relu(bn1(conv1)) before the max pool, 'stride4'..
  'stride32' = layer1..layer4. Names are nominal strides: with output_stride
  16 'stride32' has stride 16.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: Optional[int] = 1000
  output_stride: int = 32
  width: int = 64
  groups: int = 1
  width_per_group: int = 64
  # torchvision's zero_init_residual (timm's zero_init_last): the last BN
  # scale of each block starts at 0, so each block starts as its shortcut.
  zero_init_last_bn: bool = False
  # Stochastic depth, linear over the blocks as timm: block b of n drops its
  # residual branch with probability drop_path_rate * b / (n - 1) in training.
  drop_path_rate: float = 0.
  # 'torchvision': 7x7/2 conv, 3x3/2 max pool with padding 1.
  # 'ceil_pool': the same conv, max pool with padding 0 and ceil_mode (the
  #   stem of bubbliiiing's unet-pytorch ResNet-50; same weights).
  # 'cifar': 3x3/1 conv and no pool, for small images (32x32); the feature
  #   names stay nominal (the 'stride2' map then has stride 1).
  stem: str = 'torchvision'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    layers.check_output_stride(self.output_stride)
    if self.stem not in STEMS:
      raise ValueError(f'stem={self.stem!r}; choose one of {", ".join(STEMS)}.')
    if not 0 <= self.drop_path_rate < 1:
      raise ValueError(f'drop_path_rate={self.drop_path_rate} must be in '
                       '[0, 1).')
    num_blocks_total = sum(self.stage_sizes)
    conv = layers.make_conv(self.dtype, self.param_dtype)
    norm = batchnorm.make_norm(train, self.dtype, self.param_dtype)

    if self.stem == 'cifar':
      x = conv(self.width, (3, 3), (1, 1), padding=layers.padding(3), name='conv1')(x)
    else:
      x = conv(self.width, (7, 7), (2, 2), padding=layers.padding(7), name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    features = {'stride2': x}
    if self.stem == 'torchvision':
      x = pooling.max_pool_3x3_s2(x)
    elif self.stem == 'ceil_pool':
      x = pooling.max_pool_3x3_s2_ceil(x)

    strides = [2 if i > 0 and j == 0 else 1
               for i, n in enumerate(self.stage_sizes) for j in range(n)]
    schedule = iter(layers.dilation_schedule(strides, self.output_stride, 4))
    block_index = 0
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        s, d, d_after = next(schedule)
        x = self.block_cls(
            planes=self.width * 2**i, conv=conv, norm=norm, strides=s,
            dilation=d, dilation_after=d_after, groups=self.groups,
            width_per_group=self.width_per_group,
            zero_init_last_bn=self.zero_init_last_bn,
            drop_path_rate=self.drop_path_rate * block_index / max(
                num_blocks_total - 1, 1),
            deterministic=not train, name=f'layer{i + 1}_{j}')(x)
        block_index += 1
      features[f'stride{2**(i + 2)}'] = x

    if self.num_classes is None:
      return features
    x = pooling.global_avg_pool(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=self.param_dtype, name='fc')(x)


STEMS = ('torchvision', 'ceil_pool', 'cifar')

ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
WideResNet50_2 = functools.partial(ResNet50, width_per_group=128)
ResNeXt50_32x4d = functools.partial(ResNet50, groups=32, width_per_group=4)

MODELS = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet152': ResNet152,
    'wide_resnet50_2': WideResNet50_2,
    'resnext50_32x4d': ResNeXt50_32x4d,
}


# ---------------------------------------------------------------------------
# PyTorch weights (read by jaxres.weights, which applies the generic rule
# layer1_0/conv1 -> layer1.0.conv1 before torch_name)
# ---------------------------------------------------------------------------

TORCH_SIGNATURE = 'layer1_0'  # A flax module only a ResNet has.
CLASSIFIER = 'fc'  # Gives the class logits; stays fresh with backbone_only.


def torch_name(name: str, kind: str) -> str:
  """torchvision keeps the shortcut conv and its BN in one Sequential."""
  del kind  # 'conv' or 'norm': the names alone tell them apart here.
  for flax_module, torch_module in (('downsample_conv', 'downsample.0'),
                                    ('downsample_bn', 'downsample.1')):
    if name.endswith('.' + flax_module):
      return name[:-len(flax_module)] + torch_module
  return name


# Files holding a ResNet (more in unet.py and deeplab.py): the torch key
# prefix of the backbone and the source's own classifier, unused when only
# the backbone is loaded.
TORCH_LAYOUTS = (
    dict(description='torchvision ResNet', prefix='', torch_name=torch_name,
         classifier_keys=('fc.*',)),
)
