"""PyTorch reference models for the weight-conversion parity tests.

torchvision does not import on the test machine, so the published architectures
are rewritten here. Module names and nesting follow the originals exactly, so a
state dict saved by the original code loads into these classes (and the other
way round) with ``strict=True``:

- torchvision ``resnet18/34/50/101/152`` (v1.5, ``replace_stride_with_dilation``)
  and ``mobilenet_v2`` (keys ``features.N.conv.M...``, ``classifier.1``).
- torchvision ``vgg16`` (``features.N``, ``classifier.0/3/6``).
- bubbliiiing/unet-pytorch ``Unet`` on ``resnet50`` (keys ``resnet.*``) and
  ``vgg`` (keys ``vgg.features.N.*``), decoder ``up_concatK``, ``up_conv``,
  ``final``.
- bubbliiiing/deeplabv3-plus-pytorch ``DeepLab`` on ``mobilenet`` (keys
  ``backbone.features.N.conv.M``, ``aspp.*``, ``shortcut_conv``, ``cat_conv``,
  ``cls_conv``) with its ``_nostride_dilate`` output-stride rule.

Deviations, all off by default: ``align_corners`` switches the bilinear
upsampling of the segmentation heads (the originals hard-code True);
``dilate_mobilenet_features`` applies the deeplab dilation rule to the
torchvision MobileNetV2 layout (torchvision itself has no output_stride).

Every backbone has ``feature_maps(x)`` returning the jaxres feature dict
(``stride2`` ... ``stride32``, names at the nominal, undilated reduction).
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------
# torchvision ResNet (also the bubbliiiing UNet encoder)
# --------------------------------------------------------------------------


def _conv3x3(cin, cout, stride=1, dilation=1):
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation,
                   dilation=dilation, bias=False)


def _conv1x1(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
    super().__init__()
    if dilation > 1:
      # As torchvision: resnet18/34 cannot be dilated.
      raise NotImplementedError('Dilation > 1 not supported in BasicBlock')
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
    super().__init__()
    self.conv1 = _conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, stride, dilation)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


class ResNet(nn.Module):
  """torchvision.models.ResNet.

  num_classes=None drops ``avgpool``/``fc`` (as bubbliiiing's ``del
  model.fc``); ``ceil_mode_pool`` gives bubbliiiing's stem max-pool
  (3x3/2, padding 0, ceil_mode=True) instead of torchvision's padding 1.
  """

  def __init__(self, block, layers: Sequence[int], num_classes=1000,
               replace_stride_with_dilation=(False, False, False),
               ceil_mode_pool=False):
    super().__init__()
    self.inplanes = 64
    self.dilation = 1
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    if ceil_mode_pool:
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
    else:
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    dil = list(replace_stride_with_dilation)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2, dil[0])
    self.layer3 = self._make_layer(block, 256, layers[2], 2, dil[1])
    self.layer4 = self._make_layer(block, 512, layers[3], 2, dil[2])
    self.num_classes = num_classes
    if num_classes is not None:
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          _conv1x1(self.inplanes, planes * block.expansion, stride),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample,
                    previous_dilation)]
    self.inplanes = planes * block.expansion
    for _ in range(1, blocks):
      layers.append(block(self.inplanes, planes, dilation=self.dilation))
    return nn.Sequential(*layers)

  def feature_maps(self, x) -> Dict[str, torch.Tensor]:
    feats = {}
    x = self.relu(self.bn1(self.conv1(x)))
    feats['stride2'] = x
    x = self.maxpool(x)
    for i, name in enumerate(('stride4', 'stride8', 'stride16', 'stride32')):
      x = getattr(self, f'layer{i + 1}')(x)
      feats[name] = x
    return feats

  def forward(self, x):
    x = self.feature_maps(x)['stride32']
    if self.num_classes is None:
      return x
    return self.fc(torch.flatten(self.avgpool(x), 1))


_RESNET_LAYERS = {
    'resnet18': (BasicBlock, (2, 2, 2, 2)),
    'resnet34': (BasicBlock, (3, 4, 6, 3)),
    'resnet50': (Bottleneck, (3, 4, 6, 3)),
    'resnet101': (Bottleneck, (3, 4, 23, 3)),
    'resnet152': (Bottleneck, (3, 8, 36, 3)),
}

OUTPUT_STRIDE_TO_DILATION = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


def resnet(name: str, num_classes: Optional[int] = 1000, output_stride=32,
           **kwargs) -> ResNet:
  block, layers = _RESNET_LAYERS[name]
  return ResNet(block, layers, num_classes,
                OUTPUT_STRIDE_TO_DILATION[output_stride], **kwargs)


# --------------------------------------------------------------------------
# torchvision MobileNetV2
# --------------------------------------------------------------------------


def _make_divisible(v, divisor=8, min_value=None):
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:  # never round down by more than 10%
    new_v += divisor
  return new_v


class ConvBNReLU6(nn.Sequential):
  """torchvision Conv2dNormActivation: keys ``.0`` conv, ``.1`` BN."""

  def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1):
    super().__init__(
        nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True))


class TVInvertedResidual(nn.Module):
  """torchvision layout: conv.0 = pw (ConvBNReLU6), conv.1 = dw, conv.2/3 =
  linear pw conv + BN; without expansion conv.0 = dw, conv.1/2 = pw + BN."""

  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = int(round(inp * expand_ratio))
    self.use_res_connect = stride == 1 and inp == oup
    layers: List[nn.Module] = []
    if expand_ratio != 1:
      layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
    layers += [
        ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
        nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
    ]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    if self.use_res_connect:
      return x + self.conv(x)
    return self.conv(x)


MOBILENET_V2_SETTING = (
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# Indices into ``features`` whose outputs are the jaxres feature maps.
MOBILENET_FEATURE_INDEX = {
    'stride2': 1, 'stride4': 3, 'stride8': 6, 'stride16': 13, 'stride32': 17}


def _mobilenet_feature_maps(features: nn.Sequential, x):
  feats = {}
  last = MOBILENET_FEATURE_INDEX['stride32']
  wanted = {v: k for k, v in MOBILENET_FEATURE_INDEX.items()}
  for i in range(last + 1):
    x = features[i](x)
    if i in wanted:
      feats[wanted[i]] = x
  return feats


class MobileNetV2(nn.Module):
  """torchvision.models.MobileNetV2 (width_mult, round_nearest=8)."""

  def __init__(self, num_classes=1000, width_mult=1.0):
    super().__init__()
    cin = _make_divisible(32 * width_mult)
    self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
    features: List[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
    for t, c, n, s in MOBILENET_V2_SETTING:
      cout = _make_divisible(c * width_mult)
      for i in range(n):
        features.append(
            TVInvertedResidual(cin, cout, s if i == 0 else 1, expand_ratio=t))
        cin = cout
    features.append(ConvBNReLU6(cin, self.last_channel, kernel_size=1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(
        nn.Dropout(p=0.2), nn.Linear(self.last_channel, num_classes))

  def feature_maps(self, x):
    return _mobilenet_feature_maps(self.features, x)

  def forward(self, x):
    x = self.features(x)
    x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
    return self.classifier(x)


# bubbliiiing's MobileNetV2 has the stride-2 blocks at these feature indices.
MOBILENET_DOWN_IDX = (2, 4, 7, 14)


def _nostride_dilate(module: nn.Module, dilate: int):
  """bubbliiiing ``_nostride_dilate``: a stride-2 conv loses its stride (and a
  3x3 one gets dilation dilate // 2); every other 3x3 conv gets ``dilate``."""
  for m in module.modules():
    if not isinstance(m, nn.Conv2d):
      continue
    if m.stride == (2, 2):
      m.stride = (1, 1)
      if m.kernel_size == (3, 3):
        m.dilation = (dilate // 2, dilate // 2)
        m.padding = (dilate // 2, dilate // 2)
    elif m.kernel_size == (3, 3):
      m.dilation = (dilate, dilate)
      m.padding = (dilate, dilate)


def dilate_mobilenet_features(features: nn.Sequential, output_stride: int):
  """Applies deeplabv3-plus-pytorch's output-stride rule in place."""
  total = len(features)
  if output_stride == 8:
    for i in range(MOBILENET_DOWN_IDX[-2], MOBILENET_DOWN_IDX[-1]):
      _nostride_dilate(features[i], 2)
    for i in range(MOBILENET_DOWN_IDX[-1], total):
      _nostride_dilate(features[i], 4)
  elif output_stride == 16:
    for i in range(MOBILENET_DOWN_IDX[-1], total):
      _nostride_dilate(features[i], 2)
  elif output_stride != 32:
    raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')


# --------------------------------------------------------------------------
# bubbliiiing/deeplabv3-plus-pytorch: MobileNetV2 + DeepLabV3+
# --------------------------------------------------------------------------


def _bb_conv_bn(cin, cout, stride):
  return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


def _bb_conv_1x1_bn(cin, cout):
  return nn.Sequential(nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class BBInvertedResidual(nn.Module):
  """bubbliiiing layout: one flat ``conv`` Sequential (pw, bn, relu6, dw, bn,
  relu6, pw, bn), or (dw, bn, relu6, pw, bn) without expansion."""

  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = round(inp * expand_ratio)
    self.use_res_connect = stride == 1 and inp == oup
    dw = [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
          nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
    pw_linear = [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                 nn.BatchNorm2d(oup)]
    if expand_ratio == 1:
      layers = dw + pw_linear
    else:
      layers = [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
                nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
      layers += dw + pw_linear
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    if self.use_res_connect:
      return x + self.conv(x)
    return self.conv(x)


class BBMobileNetV2(nn.Module):
  """bubbliiiing nets/mobilenetv2.py MobileNetV2 (width 1.0)."""

  def __init__(self, n_class=1000):
    super().__init__()
    cin = 32
    features: List[nn.Module] = [_bb_conv_bn(3, cin, 2)]
    for t, c, n, s in MOBILENET_V2_SETTING:
      for i in range(n):
        features.append(BBInvertedResidual(cin, c, s if i == 0 else 1, t))
        cin = c
    features.append(_bb_conv_1x1_bn(cin, 1280))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, n_class))

  def forward(self, x):
    x = self.features(x)
    return self.classifier(x.mean(3).mean(2))


class DeepLabMobileNetV2(nn.Module):
  """deeplabv3_plus.py ``MobileNetV2`` wrapper: features[:-1], dilated."""

  def __init__(self, downsample_factor=16):
    super().__init__()
    self.features = BBMobileNetV2().features[:-1]
    dilate_mobilenet_features(self.features, downsample_factor)

  def feature_maps(self, x):
    return _mobilenet_feature_maps(self.features, x)

  def forward(self, x):
    low_level_features = self.features[:4](x)
    x = self.features[4:](low_level_features)
    return low_level_features, x


def _conv_bn_relu(cin, cout, k, dilation=1, momentum=0.1):
  return nn.Sequential(
      nn.Conv2d(cin, cout, k, 1, padding=dilation * (k // 2),
                dilation=dilation, bias=True),
      nn.BatchNorm2d(cout, momentum=momentum), nn.ReLU(inplace=True))


class ASPP(nn.Module):

  def __init__(self, dim_in, dim_out, rate=1, align_corners=True):
    super().__init__()
    self.align_corners = align_corners
    self.branch1 = _conv_bn_relu(dim_in, dim_out, 1)
    self.branch2 = _conv_bn_relu(dim_in, dim_out, 3, 6 * rate)
    self.branch3 = _conv_bn_relu(dim_in, dim_out, 3, 12 * rate)
    self.branch4 = _conv_bn_relu(dim_in, dim_out, 3, 18 * rate)
    self.branch5_conv = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=True)
    self.branch5_bn = nn.BatchNorm2d(dim_out, momentum=0.1)
    self.branch5_relu = nn.ReLU(inplace=True)
    self.conv_cat = _conv_bn_relu(dim_out * 5, dim_out, 1)

  def forward(self, x):
    _, _, h, w = x.shape
    pooled = x.mean(dim=(2, 3), keepdim=True)
    pooled = self.branch5_relu(self.branch5_bn(self.branch5_conv(pooled)))
    pooled = F.interpolate(pooled, (h, w), mode='bilinear',
                           align_corners=self.align_corners)
    cat = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                     self.branch4(x), pooled], dim=1)
    return self.conv_cat(cat)


class DeepLab(nn.Module):
  """bubbliiiing DeepLab(backbone='mobilenet')."""

  def __init__(self, num_classes=21, downsample_factor=16, align_corners=True):
    super().__init__()
    self.align_corners = align_corners
    self.backbone = DeepLabMobileNetV2(downsample_factor)
    self.aspp = ASPP(320, 256, rate=16 // downsample_factor,
                     align_corners=align_corners)
    self.shortcut_conv = nn.Sequential(
        nn.Conv2d(24, 48, 1), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
    self.cat_conv = nn.Sequential(
        nn.Conv2d(48 + 256, 256, 3, stride=1, padding=1),
        nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Conv2d(256, 256, 3, stride=1, padding=1),
        nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.Dropout(0.1))
    self.cls_conv = nn.Conv2d(256, num_classes, 1, stride=1)

  def forward(self, x):
    h, w = x.shape[2:]
    low_level_features, x = self.backbone(x)
    x = self.aspp(x)
    low_level_features = self.shortcut_conv(low_level_features)
    x = F.interpolate(x, size=low_level_features.shape[2:], mode='bilinear',
                      align_corners=self.align_corners)
    x = self.cat_conv(torch.cat((x, low_level_features), dim=1))
    x = self.cls_conv(x)
    return F.interpolate(x, size=(h, w), mode='bilinear',
                         align_corners=self.align_corners)


# --------------------------------------------------------------------------
# bubbliiiing/unet-pytorch: VGG16 + UNet
# --------------------------------------------------------------------------

VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
             512, 512, 512, 'M', 512, 512, 512, 'M')
# feat1..feat5 are features[:4], [4:9], [9:16], [16:23], [23:-1].
VGG16_SPLITS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG16_FEATURE_NAMES = ('stride1', 'stride2', 'stride4', 'stride8', 'stride16')


class VGG(nn.Module):
  """bubbliiiing nets/vgg.py VGG16 (no BN) after ``del avgpool, classifier``."""

  def __init__(self, in_channels=3):
    super().__init__()
    layers: List[nn.Module] = []
    for v in VGG16_CFG:
      if v == 'M':
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [nn.Conv2d(in_channels, v, 3, padding=1),
                   nn.ReLU(inplace=True)]
        in_channels = v
    self.features = nn.Sequential(*layers)

  def feature_maps(self, x):
    feats = {}
    for name, (a, b) in zip(VGG16_FEATURE_NAMES, VGG16_SPLITS):
      x = self.features[a:b](x)
      feats[name] = x
    return feats

  def forward(self, x):
    return list(self.feature_maps(x).values())


class TorchvisionVGG(nn.Module):
  """torchvision.models.vgg16 (no BN): ``features``, ``avgpool``, ``classifier``.

  ``classifier_width`` (4096 in torchvision) shrinks the test model.
  """

  def __init__(self, num_classes=1000, classifier_width=4096):
    super().__init__()
    self.features = VGG().features
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, classifier_width), nn.ReLU(True), nn.Dropout(),
        nn.Linear(classifier_width, classifier_width), nn.ReLU(True),
        nn.Dropout(), nn.Linear(classifier_width, num_classes))

  def forward(self, x):
    x = torch.flatten(self.avgpool(self.features(x)), 1)
    return self.classifier(x)


class _Upsample2x(nn.Module):
  """nn.UpsamplingBilinear2d(scale_factor=2) when align_corners; no params."""

  def __init__(self, align_corners=True):
    super().__init__()
    self.align_corners = align_corners

  def forward(self, x):
    return F.interpolate(x, scale_factor=2, mode='bilinear',
                         align_corners=self.align_corners)


class unetUp(nn.Module):  # pylint: disable=invalid-name

  def __init__(self, in_size, out_size, align_corners=True):
    super().__init__()
    self.conv1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1)
    self.conv2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1)
    self.up = _Upsample2x(align_corners)
    self.relu = nn.ReLU(inplace=True)

  def forward(self, skip, deep):
    x = torch.cat([skip, self.up(deep)], 1)
    return self.relu(self.conv2(self.relu(self.conv1(x))))


class Unet(nn.Module):
  """bubbliiiing Unet(backbone='vgg' | 'resnet50')."""

  def __init__(self, num_classes=21, backbone='vgg', align_corners=True):
    super().__init__()
    if backbone == 'vgg':
      self.vgg = VGG()
      in_filters = (192, 384, 768, 1024)
    elif backbone == 'resnet50':
      self.resnet = resnet('resnet50', num_classes=None, ceil_mode_pool=True)
      in_filters = (192, 512, 1024, 3072)
    else:
      raise ValueError(f'Unsupported backbone {backbone!r}')
    out_filters = (64, 128, 256, 512)
    self.up_concat4 = unetUp(in_filters[3], out_filters[3], align_corners)
    self.up_concat3 = unetUp(in_filters[2], out_filters[2], align_corners)
    self.up_concat2 = unetUp(in_filters[1], out_filters[1], align_corners)
    self.up_concat1 = unetUp(in_filters[0], out_filters[0], align_corners)
    if backbone == 'resnet50':
      self.up_conv = nn.Sequential(
          _Upsample2x(align_corners),
          nn.Conv2d(out_filters[0], out_filters[0], 3, padding=1), nn.ReLU(),
          nn.Conv2d(out_filters[0], out_filters[0], 3, padding=1), nn.ReLU())
    else:
      self.up_conv = None
    self.final = nn.Conv2d(out_filters[0], num_classes, 1)
    self.backbone = backbone

  @property
  def encoder(self):
    return self.vgg if self.backbone == 'vgg' else self.resnet

  def forward(self, x):
    feat1, feat2, feat3, feat4, feat5 = self.encoder.feature_maps(x).values()
    up4 = self.up_concat4(feat4, feat5)
    up3 = self.up_concat3(feat3, up4)
    up2 = self.up_concat2(feat2, up3)
    up1 = self.up_concat1(feat1, up2)
    if self.up_conv is not None:
      up1 = self.up_conv(up1)
    return self.final(up1)


# --------------------------------------------------------------------------
# Test helpers
# --------------------------------------------------------------------------


# Last layers (logits) of the reference models.
CLASSIFIER_MODULES = ('fc', 'classifier.1', 'classifier.6', 'final',
                      'cls_conv')


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _residual_branch_norms(model: nn.Module):
  for m in model.modules():
    if isinstance(m, Bottleneck):
      yield m.bn3
    elif isinstance(m, BasicBlock):
      yield m.bn2
    elif isinstance(m, (TVInvertedResidual, BBInvertedResidual)):
      if m.use_res_connect:
        yield m.conv[-1]


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, calib_input=None):
  """Random weights with O(1) activations, in eval mode.

  Conv/linear weights are He-normal, biases and BN affine random. When
  ``calib_input`` is given, BN running statistics are first measured on it
  (so deep nets neither explode nor vanish), then perturbed at random so they
  are not the batch statistics; otherwise they are drawn at random.

  The BN closing each residual branch gets a small scale (0.1-0.5, as in
  trained ResNets): with O(1) scales a deep BN net at init is chaotic and
  amplifies float32 rounding ~1000x (ResNet-152 logits differ by 2e-3
  between torch float32 and float64), which would hide a real mismatch
  behind a loose tolerance. With them, float32 vs float64 is ~1e-6.
  """
  g = torch.Generator().manual_seed(seed)
  residual_bns = set(id(m) for m in _residual_branch_norms(model))

  def normal_(t, std):
    t.copy_(torch.randn(t.shape, generator=g) * std)

  def uniform_(t, lo, hi):
    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

  bns = []
  for name, m in model.named_modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      fan_in = m.weight[0].numel()
      # He init keeps ReLU activations O(1); the classifier gets PyTorch's
      # default scale (std 1 / sqrt(3 fan_in)), as in the reference repos.
      last = name in CLASSIFIER_MODULES
      normal_(m.weight, math.sqrt((1 / 3 if last else 2) / fan_in))
      if m.bias is not None:
        normal_(m.bias, 0.1)
    elif isinstance(m, nn.BatchNorm2d):
      if id(m) in residual_bns:
        uniform_(m.weight, 0.1, 0.5)
      else:
        uniform_(m.weight, 0.5, 1.5)
      normal_(m.bias, 0.2)
      bns.append(m)
  if calib_input is not None:
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
      m.reset_running_stats()
      m.momentum = None  # cumulative average: one batch -> its statistics
    model.train()
    model(calib_input)
    for m, momentum in saved:
      m.momentum = momentum
  for m in bns:
    if calib_input is None:
      normal_(m.running_mean, 0.2)
      uniform_(m.running_var, 0.5, 2.0)
    else:
      var = m.running_var.clamp(min=1e-2)
      noise = torch.empty_like(var)
      uniform_(noise, 0.8, 1.25)
      shift = torch.empty_like(var)
      normal_(shift, 0.1)
      m.running_mean.add_(shift * var.sqrt())
      m.running_var.copy_(var * noise)
    m.num_batches_tracked.fill_(7)
  model.eval()
  return model
