"""DeepLabV3+ (bubbliiiing/deeplabv3-plus-pytorch layout).

Encoder: a dilated backbone at output stride 16 or 8. ASPP on its deepest map
('stride32'): five 256-channel branches - 1x1, three 3x3 atrous convs (rates
6/12/18 at OS16, doubled at OS8) and image pooling - each conv with bias and
followed by BN + ReLU, concatenated and fused by a 1x1 conv. Decoder: low-level
map ('stride4') -> 1x1 to 48, ASPP output upsampled to its size, concat, two
3x3 convs (BN, ReLU, dropout 0.5 then 0.1), a 1x1 classifier, and a bilinear
upsample to the input size. Training needs a 'dropout' rng, and a batch of at
least 2 for the BatchNorm of the image-pooling branch.

Parameter names mirror the PyTorch module names; a Sequential index becomes a
``_i`` suffix, so a converter maps ``a.b.3.weight`` -> ``a/b_3/kernel``:
  backbone.features.{i}.*      -> backbone/... (MobileNetV2 names)
  aspp.branch{1-4}.{0,1}       -> aspp/branch{1-4}_{0,1}          (conv, bn)
  aspp.branch5_conv, _bn       -> aspp/branch5_conv, aspp/branch5_bn
  aspp.conv_cat.{0,1}          -> aspp/conv_cat_{0,1}
  shortcut_conv.{0,1}          -> shortcut_conv_{0,1}
  cat_conv.{0,1,4,5}           -> cat_conv_{0,1,4,5}
  cls_conv                     -> cls_conv
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models import mobilenetv2
from jaxres.models import resnet
from jaxres.models.resize import resize_bilinear

ModuleDef = Any

# name -> (constructor, its width field and that field's type).
BACKBONES = {
    'mobilenet_v2': (mobilenetv2.MODELS['mobilenet_v2'], 'width_mult', float),
    'resnet50': (resnet.MODELS['resnet50'], 'width', int),
    'resnet101': (resnet.MODELS['resnet101'], 'width', int),
}


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling; ``rate`` = 16 // output_stride."""
  features: int
  rate: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    def conv_bn_relu(y, kernel, dilation, name):
      y = self.conv(self.features, (kernel, kernel),
                    padding=layers.padding(kernel, dilation),
                    kernel_dilation=(dilation, dilation), name=f'{name}_0')(y)
      return nn.relu(self.norm(name=f'{name}_1')(y))

    branches = [conv_bn_relu(x, 1, 1, 'branch1')]
    for i, base_rate in enumerate((6, 12, 18)):
      branches.append(
          conv_bn_relu(x, 3, base_rate * self.rate, f'branch{i + 2}'))
    # Image pooling. The reference upsamples the 1x1 map with bilinear
    # interpolation, which for a 1x1 input is a broadcast.
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = self.conv(self.features, (1, 1), padding=0,
                       name='branch5_conv')(pooled)
    pooled = nn.relu(self.norm(name='branch5_bn')(pooled))
    branches.append(jnp.broadcast_to(
        pooled, x.shape[:3] + (self.features,)).astype(branches[0].dtype))
    y = jnp.concatenate(branches, axis=-1)
    return conv_bn_relu(y, 1, 1, 'conv_cat')


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+; ``__call__`` returns float32 logits [B, H, W, num_classes]."""
  num_classes: int = 21
  backbone: str = 'mobilenet_v2'
  output_stride: int = 16
  aspp_features: int = 256
  shortcut_features: int = 48
  decoder_features: int = 256
  align_corners: bool = True
  # The backbone's width knob when set (tiny models in tests): base channels
  # for ResNet, width multiplier for MobileNetV2.
  backbone_width: Optional[float] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.backbone not in BACKBONES:
      raise ValueError(f'DeepLabV3+ backbone {self.backbone!r} not in '
                       f'{sorted(BACKBONES)}.')
    layers.check_output_stride(self.output_stride, allowed=(8, 16))
    conv = layers.make_conv(self.dtype, self.param_dtype, use_bias=True)
    norm = batchnorm.make_norm(train, self.dtype, self.param_dtype)

    make_backbone, width_field, width_type = BACKBONES[self.backbone]
    extra = ({} if self.backbone_width is None
             else {width_field: width_type(self.backbone_width)})
    encoder = make_backbone(
        num_classes=None, output_stride=self.output_stride, dtype=self.dtype,
        param_dtype=self.param_dtype, name='backbone', **extra)
    features = encoder(x, train=train)

    y = ASPP(self.aspp_features, 16 // self.output_stride, conv, norm,
             name='aspp')(features['stride32'])

    low = conv(self.shortcut_features, (1, 1), padding=0,
               name='shortcut_conv_0')(features['stride4'])
    low = nn.relu(norm(name='shortcut_conv_1')(low))

    y = resize_bilinear(y, low.shape[1:3], self.align_corners)
    y = jnp.concatenate([y, low.astype(y.dtype)], axis=-1)
    for conv_idx, rate in ((0, 0.5), (4, 0.1)):
      y = conv(self.decoder_features, (3, 3), padding=layers.padding(3),
               name=f'cat_conv_{conv_idx}')(y)
      y = nn.relu(norm(name=f'cat_conv_{conv_idx + 1}')(y))
      y = nn.Dropout(rate, deterministic=not train)(y)
    y = conv(self.num_classes, (1, 1), padding=0, name='cls_conv')(y)
    return resize_bilinear(y.astype(jnp.float32), x.shape[1:3],
                           self.align_corners)


MODELS = {
    'deeplabv3plus_mobilenet_v2': functools.partial(
        DeepLabV3Plus, backbone='mobilenet_v2'),
    'deeplabv3plus_resnet50': functools.partial(
        DeepLabV3Plus, backbone='resnet50'),
    'deeplabv3plus_resnet101': functools.partial(
        DeepLabV3Plus, backbone='resnet101'),
}


# ---------------------------------------------------------------------------
# PyTorch weights (read by jaxres.weights): the head follows the generic rule
# (aspp/conv_cat_0 -> aspp.conv_cat.0); backbones are named by their files.
# ---------------------------------------------------------------------------

CLASSIFIER = 'cls_conv'  # Gives the class logits.

TORCH_LAYOUTS = (
    dict(description='DeepLab-style ResNet backbone', backbone=resnet,
         prefix='backbone.', torch_name=resnet.torch_name),
    dict(description='bubbliiiing DeepLabV3+ MobileNetV2 backbone',
         backbone=mobilenetv2, prefix='backbone.',
         torch_name=mobilenetv2.bubbliiiing_torch_name),
    dict(description='torchvision-layout MobileNetV2 backbone',
         backbone=mobilenetv2, prefix='backbone.'),
)
