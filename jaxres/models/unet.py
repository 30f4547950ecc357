"""UNet with a ResNet-50 or VGG16 encoder (bubbliiiing/unet-pytorch layout).

The decoder climbs from the deepest feature map: each ``up_concat`` block
upsamples the deeper map bilinearly, concatenates [skip, upsampled] on channels
and applies conv3x3 + ReLU twice (convs with bias, no BatchNorm). ResNet's
shallowest map is at stride 2, so that variant ends with ``up_conv`` (upsample
to the input size, two conv3x3 + ReLU); VGG keeps a full-resolution map and
needs none. A 1x1 ``final`` conv gives the class logits.

Parameter names mirror the PyTorch module names so a converter is a mapping:
  resnet.* / vgg.*                 -> backbone/...
  up_concat{i}.conv{1,2}.{w,b}     -> up_concat{i}/conv{1,2}/{kernel,bias}
  up_conv.{1,3}.{w,b}              -> up_conv_{1,3}/{kernel,bias}
  final.{w,b}                      -> final/{kernel,bias}
(conv weights OIHW -> HWIO).

Where the reference doubles the deeper map (``UpsamplingBilinear2d(2)``) this
upsamples to the skip's size instead: identical when the input size is a
multiple of 32 (or 16 for VGG), and it keeps odd input sizes working.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxres.models import layers
from jaxres.models import resnet
from jaxres.models import vgg
from jaxres.models.resize import resize_bilinear

ModuleDef = Any

BACKBONES = {
    'resnet18': resnet.MODELS['resnet18'],
    'resnet34': resnet.MODELS['resnet34'],
    'resnet50': resnet.MODELS['resnet50'],
    'vgg16': vgg.MODELS['vgg16'],
}


def _stride(name: str) -> int:
  return int(name[len('stride'):])


class UNetUp(nn.Module):
  """Upsample ``deep`` to ``skip``'s size, concat [skip, up], two conv3x3+ReLU."""
  features: int
  conv: ModuleDef
  align_corners: bool

  @nn.compact
  def __call__(self, skip, deep):
    up = resize_bilinear(deep, skip.shape[1:3], self.align_corners)
    x = jnp.concatenate([skip, up.astype(skip.dtype)], axis=-1)
    x = nn.relu(self.conv(self.features, (3, 3), name='conv1')(x))
    x = nn.relu(self.conv(self.features, (3, 3), name='conv2')(x))
    return x


class UNet(nn.Module):
  """UNet; ``__call__`` returns float32 logits [B, H, W, num_classes]."""
  num_classes: int = 21
  backbone: str = 'resnet50'
  decoder_filters: tuple[int, ...] = (64, 128, 256, 512)
  align_corners: bool = True
  # The backbone's base channel count when set (tiny models in tests).
  backbone_width: Optional[int] = None
  # ResNet stem: 'torchvision' or 'ceil_pool' (the reference's max pool, needed
  # to reproduce bubbliiiing unet-pytorch checkpoints exactly; the default of
  # 'unet_resnet50').
  backbone_stem: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.backbone not in BACKBONES:
      raise ValueError(f'UNet backbone {self.backbone!r} not in '
                       f'{sorted(BACKBONES)}.')
    extra = {} if self.backbone_width is None else {'width': self.backbone_width}
    if self.backbone_stem is not None:
      if not self.backbone.startswith('resnet'):
        raise ValueError('backbone_stem applies to ResNet backbones only.')
      extra['stem'] = self.backbone_stem
    encoder = BACKBONES[self.backbone](
        num_classes=None, dtype=self.dtype, param_dtype=self.param_dtype,
        name='backbone', **extra)
    features = encoder(x, train=train)
    *skips, deep = (features[k] for k in sorted(features, key=_stride))
    if len(skips) != len(self.decoder_filters):
      raise ValueError(f'Expected {len(self.decoder_filters) + 1} feature maps '
                       f'from {self.backbone}, got {sorted(features)}.')

    conv = functools.partial(
        layers.make_conv(self.dtype, self.param_dtype, use_bias=True,
                         kernel_init=layers.torch_default_kernel_init),
        padding=layers.padding(3))
    y = deep
    for i in reversed(range(len(skips))):
      y = UNetUp(self.decoder_filters[i], conv, self.align_corners,
                 name=f'up_concat{i + 1}')(skips[i], y)

    if 'stride1' not in features:
      filters = self.decoder_filters[0]
      y = resize_bilinear(y, x.shape[1:3], self.align_corners)
      y = nn.relu(conv(filters, (3, 3), name='up_conv_1')(y))
      y = nn.relu(conv(filters, (3, 3), name='up_conv_3')(y))

    y = conv(self.num_classes, (1, 1), padding=0, name='final')(y)
    return y.astype(jnp.float32)


MODELS = {
    # The reference's ResNet-50 stem pools with ceil_mode (same weights as
    # torchvision's, slightly different outputs): default to it.
    'unet_resnet50': functools.partial(UNet, backbone='resnet50',
                                       backbone_stem='ceil_pool'),
    'unet_vgg16': functools.partial(UNet, backbone='vgg16'),
    # Basic-block encoders (no reference weights): fast small-data models.
    'unet_resnet18': functools.partial(UNet, backbone='resnet18'),
    'unet_resnet34': functools.partial(UNet, backbone='resnet34'),
}


# ---------------------------------------------------------------------------
# PyTorch weights (read by jaxres.weights): the decoder follows the generic
# rule (up_conv_1 -> up_conv.1); the encoders are named by their model files.
# ---------------------------------------------------------------------------

CLASSIFIER = 'final'  # Gives the class logits.

TORCH_LAYOUTS = (
    dict(description='bubbliiiing UNet ResNet encoder', backbone=resnet,
         prefix='resnet.', torch_name=resnet.torch_name,
         note="note: bubbliiiing's UNet pools its stem with padding 0 and "
         "ceil_mode; build unet_resnet50 with backbone_stem='ceil_pool' to "
         'reproduce its outputs exactly.'),
    dict(description='bubbliiiing UNet VGG16 encoder', backbone=vgg,
         prefix='vgg.'),
)
