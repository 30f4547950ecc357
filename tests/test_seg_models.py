"""Tests for the segmentation heads (unet, deeplab) and the bilinear resize."""
import functools
import itertools

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import models
from jaxres.models import deeplab
from jaxres.models import unet
from jaxres.models.resize import resize_bilinear

# 21 classes. UNet and DeepLabV3+-MobileNetV2: the bubbliiiing models
# (REFERENCE.md). DeepLabV3+-ResNet: backbone (torchvision without fc) plus
# the head, 2048 channels into ASPP and 256 low-level channels.
PARAMS_21 = {
    'unet_resnet50': 43_934_101,
    'unet_vgg16': 24_892_437,
    # torchvision's ResNet-18/34 without fc, plus the decoder (see
    # test_unet_decoder_count_follows_its_channels).
    'unet_resnet18': 11_176_512 + 8_703_317,
    'unet_resnet34': 21_284_672 + 8_703_317,
    'deeplabv3plus_mobilenet_v2': 5_818_149,
    'deeplabv3plus_resnet50': 23_508_032 + 16_846_245,
    'deeplabv3plus_resnet101': 42_500_160 + 16_846_245,
}
DEEPLAB = sorted(deeplab.MODELS)
UNET = sorted(unet.MODELS)


def num_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def shapes(model, height, width, batch=2):
  """(logits, variables) as ShapeDtypeStructs: traces init, computes nothing."""
  x = jnp.zeros((batch, height, width, 3), jnp.float32)
  return jax.eval_shape(
      functools.partial(model.init_with_output, train=False),
      jax.random.key(0), x)


def test_registry_holds_all_heads():
  assert set(PARAMS_21) <= set(models.MODELS)


@pytest.mark.parametrize('name,output_stride', [(n, None) for n in UNET] +
                         list(itertools.product(DEEPLAB, (8, 16))))
def test_param_count_and_logits_shape(name, output_stride):
  kwargs = {} if output_stride is None else {'output_stride': output_stride}
  model = models.build_model(name, num_classes=21, **kwargs)
  logits, variables = shapes(model, 512, 512)
  assert num_params(variables['params']) == PARAMS_21[name]
  assert logits.shape == (2, 512, 512, 21) and logits.dtype == jnp.float32
  # The backbone is one subtree, so a backbone-only checkpoint drops in.
  assert 'backbone' in variables['params']


def _unet_decoder_count(skip_channels, deep_channels, filters, classes):
  """Two 3x3 convs (with bias) per level on [skip, upsampled deeper], the
  two full-resolution 3x3 convs and the 1x1 classifier."""
  conv = lambda cin, cout, k=3: cin * k * k * cout + cout
  total, deeper = 0, deep_channels
  for skip, f in reversed(list(zip(skip_channels, filters))):
    total += conv(skip + deeper, f) + conv(f, f)
    deeper = f
  return total + 2 * conv(filters[0], filters[0]) + conv(filters[0], classes, 1)


@pytest.mark.parametrize('name,skips,deep', [
    ('unet_resnet18', (64, 64, 128, 256), 512),
    ('unet_resnet50', (64, 256, 512, 1024), 2048)])
def test_unet_decoder_count_follows_its_channels(name, skips, deep):
  _, variables = shapes(models.build_model(name, num_classes=21), 64, 64)
  params = dict(variables['params'])
  backbone = num_params(params.pop('backbone'))
  assert num_params(params) == _unet_decoder_count(
      skips, deep, (64, 128, 256, 512), 21)
  assert backbone + num_params(params) == PARAMS_21[name]


def test_module_names_mirror_reference():
  _, variables = shapes(models.build_model('unet_resnet50'), 64, 64)
  assert set(variables['params']) == {
      'backbone', 'up_concat1', 'up_concat2', 'up_concat3', 'up_concat4',
      'up_conv_1', 'up_conv_3', 'final'}
  assert set(variables['params']['up_concat4']) == {'conv1', 'conv2'}
  _, variables = shapes(models.build_model('unet_vgg16'), 64, 64)
  assert 'up_conv_1' not in variables['params']
  _, variables = shapes(models.build_model('deeplabv3plus_mobilenet_v2'), 64, 64)
  assert set(variables['params']) == {
      'backbone', 'aspp', 'shortcut_conv_0', 'shortcut_conv_1', 'cat_conv_0',
      'cat_conv_1', 'cat_conv_4', 'cat_conv_5', 'cls_conv'}
  assert set(variables['params']['aspp']) == {
      'branch1_0', 'branch1_1', 'branch2_0', 'branch2_1', 'branch3_0',
      'branch3_1', 'branch4_0', 'branch4_1', 'branch5_conv', 'branch5_bn',
      'conv_cat_0', 'conv_cat_1'}


@pytest.mark.parametrize('name', UNET + DEEPLAB)
def test_odd_input_size_gives_logits_at_input_size(name):
  logits, _ = shapes(models.build_model(name, num_classes=3), 500, 375)
  assert logits.shape == (2, 500, 375, 3)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.build_model('deeplabv3plus_mobilenet_v2', num_classes=5,
                             dtype=jnp.bfloat16)
  logits, variables = shapes(model, 64, 64)
  assert logits.dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(variables['params'])} == {
      jnp.dtype(jnp.float32)}


def test_bad_backbone_or_output_stride_raises():
  with pytest.raises(ValueError, match='output_stride'):
    shapes(models.build_model('deeplabv3plus_mobilenet_v2', output_stride=32),
           64, 64)
  with pytest.raises(ValueError, match='backbone'):
    shapes(deeplab.DeepLabV3Plus(backbone='vgg16'), 64, 64)
  with pytest.raises(ValueError, match='backbone'):
    shapes(unet.UNet(backbone='mobilenet_v2'), 64, 64)


@pytest.mark.parametrize('output_stride,rates', [(16, (6, 12, 18)),
                                                   (8, (12, 24, 36))])
def test_aspp_rates_follow_output_stride(output_stride, rates):
  model = models.build_model('deeplabv3plus_mobilenet_v2', num_classes=2,
                             output_stride=output_stride)
  dilations = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv):
      path = '/'.join(context.module.path)
      dilations[path] = context.module.kernel_dilation
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    shapes(model, 64, 64)
  assert [dilations[f'aspp/branch{i}_0'] for i in (2, 3, 4)] == [
      (r, r) for r in rates]


# --------------------------------------------------------------------------
# Tiny real forward passes.
# --------------------------------------------------------------------------

TINY = {
    'unet_resnet50': dict(backbone_width=8, decoder_filters=(8, 8, 8, 8)),
    'unet_vgg16': dict(backbone_width=8, decoder_filters=(8, 8, 8, 8)),
    'deeplabv3plus_mobilenet_v2': dict(
        backbone_width=0.25, aspp_features=16, shortcut_features=8,
        decoder_features=16, output_stride=8),
}


def cheap_variables(model, x):
  """He-normal kernels, zero biases, unit BN: skips tracing+running init."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if path[-1] == 'kernel':
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) * std).astype(np.float32)
    if path[-1] in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), x)
  flat = traverse_util.flatten_dict(abstract)
  return traverse_util.unflatten_dict({k: fill(k, v) for k, v in flat.items()})


@pytest.mark.parametrize('name', sorted(TINY))
def test_train_forward_is_finite_and_updates_batch_stats(name):
  model = models.build_model(name, num_classes=3, **TINY[name])
  x = jax.random.normal(jax.random.key(1), (2, 64, 48, 3))
  variables = cheap_variables(model, x)
  train_apply = jax.jit(functools.partial(
      model.apply, train=True, mutable=['batch_stats']))
  logits, updates = train_apply(variables, x,
                                rngs={'dropout': jax.random.key(2)})
  assert logits.shape == (2, 64, 48, 3) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  if name == 'unet_vgg16':  # No BatchNorm anywhere.
    assert 'batch_stats' not in variables and not updates
    return
  # Every BatchNorm moved its running variance (some means stay ~0: a BN
  # output fed through a 1x1 conv keeps zero batch mean).
  old = traverse_util.flatten_dict(variables['batch_stats'])
  new = traverse_util.flatten_dict(updates['batch_stats'])
  assert old.keys() == new.keys()
  assert all(not np.allclose(old[k], new[k]) for k in old if k[-1] == 'var')


# --------------------------------------------------------------------------
# Resize.
# --------------------------------------------------------------------------


def align_corners_reference(x, out_h, out_w):
  """Direct per-pixel formula: output (i, j) samples the input at
  (i * (H - 1) / (out_h - 1), j * (W - 1) / (out_w - 1))."""
  _, h, w, _ = x.shape
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]), np.float64)
  for i in range(out_h):
    sy = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    y0 = min(int(np.floor(sy)), h - 1)
    y1, ly = min(y0 + 1, h - 1), sy - y0
    for j in range(out_w):
      sx = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
      x0 = min(int(np.floor(sx)), w - 1)
      x1, lx = min(x0 + 1, w - 1), sx - x0
      out[:, i, j] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                      + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
  return out


SIZES = [((5, 7), (13, 11)),   # up, non-square
         ((16, 12), (6, 5)),   # down
         ((6, 9), (12, 4)),    # up in H, down in W
         ((1, 4), (3, 1)),     # input and output of size 1
         ((4, 4), (8, 8))]     # the UNet x2


@pytest.mark.parametrize('in_size,out_size', SIZES)
def test_resize_align_corners_matches_direct_formula(in_size, out_size):
  x = np.random.default_rng(0).normal(size=(2, *in_size, 3))
  got = resize_bilinear(jnp.asarray(x, jnp.float32), out_size,
                        align_corners=True)
  assert got.shape == (2, *out_size, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(
      got, align_corners_reference(x, *out_size), atol=1e-5)


@pytest.mark.parametrize('in_size,out_size', SIZES)
def test_resize_half_pixel_is_jax_image_resize(in_size, out_size):
  x = jax.random.normal(jax.random.key(0), (2, *in_size, 3))
  got = resize_bilinear(x, out_size, align_corners=False)
  want = jax.image.resize(x, (2, *out_size, 3), 'bilinear', antialias=False)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_resize_keeps_dtype_and_identity():
  x = jax.random.normal(jax.random.key(0), (1, 4, 6, 2)).astype(jnp.bfloat16)
  for align_corners in (True, False):
    assert resize_bilinear(x, (9, 3), align_corners).dtype == jnp.bfloat16
    assert resize_bilinear(x, (4, 6), align_corners) is x


@pytest.mark.parametrize('align_corners', [True, False])
def test_resize_matches_torch_interpolate(align_corners):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(1).normal(size=(2, 3, 7, 10)).astype(np.float32)
  for size in ((15, 4), (3, 21), (1, 1)):
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=size, mode='bilinear',
        align_corners=align_corners).numpy().transpose(0, 2, 3, 1)
    got = resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), size,
                          align_corners)
    np.testing.assert_allclose(got, want, atol=1e-5)
