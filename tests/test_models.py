"""Tests for the classification backbones (layers, resnet, mobilenetv2, vgg).

Shapes and parameter counts of the full-size models come from
`jax.eval_shape` (tracing only). Real forwards use tiny nets, each compiled
once (CPU compile time dominates: see `_tiny_run`).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import models
from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models import mobilenetv2
from jaxres.models import pooling
from jaxres.models import resnet
from jaxres.models import vgg
from jaxres.models import build_model

# torchvision 0.28, 1000 classes (REFERENCE.md).
TORCHVISION_PARAMS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
    'wide_resnet50_2': 68_883_240,
    'resnext50_32x4d': 25_028_904,
    'mobilenet_v2': 3_504_872,
    'vgg16': 138_357_544,
}

FEATURE_CHANNELS = {
    'resnet18': {'stride2': 64, 'stride4': 64, 'stride8': 128, 'stride16': 256,
                 'stride32': 512},
    'resnet50': {'stride2': 64, 'stride4': 256, 'stride8': 512,
                 'stride16': 1024, 'stride32': 2048},
    'mobilenet_v2': {'stride2': 16, 'stride4': 24, 'stride8': 32,
                     'stride16': 96, 'stride32': 320},
}

# Tiny nets for real forwards. Stages 3 and 4 hold two blocks so a dilated
# stage has both a stride-losing first block and a later block.
TINY = {
    'resnet_basic': functools.partial(
        resnet.ResNet, stage_sizes=(1, 1, 2, 2), block_cls=resnet.BasicBlock,
        width=8),
    'resnet_bottleneck_grouped': functools.partial(
        resnet.ResNet, stage_sizes=(1, 1, 2, 2), block_cls=resnet.Bottleneck,
        width=8, groups=2, width_per_group=32),
    'mobilenet_v2': functools.partial(mobilenetv2.MobileNetV2, width_mult=0.25),
    'vgg16': functools.partial(vgg.VGG16, width=8, classifier_width=16),
}
DILATABLE = ('resnet_basic', 'resnet_bottleneck_grouped', 'mobilenet_v2')


# XLA:CPU compiles these small graphs ~30% faster at level 0; they run in ms.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def compile_and_run(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def num_params(variables):
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def shapes(model, size=224, batch=1):
  """(output, variables) as ShapeDtypeStructs: traces init, computes nothing."""
  x = jnp.zeros((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(
      functools.partial(model.init_with_output, train=False),
      jax.random.key(0), x)


def fake_variables(model, x, seed=0):
  """Random variables of the right shapes, without running `init`.

  On CPU a jitted `init` spends seconds compiling the random initializers;
  numpy is instant. Kernels get He scaling; running stats are moved off
  their defaults so eval-mode BatchNorm is not the identity.
  """
  rng = np.random.default_rng(seed)
  _, abstract = shapes(model, size=x.shape[1], batch=x.shape[0])

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, size=leaf.shape)
    return rng.normal(scale=0.1, size=leaf.shape)  # bias, mean

  return jax.tree_util.tree_map_with_path(
      lambda p, l: jnp.asarray(fill(p, l), l.dtype), abstract)


@functools.lru_cache(maxsize=None)
def _tiny_run(name):
  """Runs one tiny net in every mode the tests look at, in one compile.

  Returns numpy: variables, train-mode (logits, updated collections),
  eval-mode logits and, for dilatable nets, eval-mode feature dicts at
  output stride 8, 16 and 32 on the same weights.
  """
  ctor = TINY[name]
  model = ctor(num_classes=10)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = fake_variables(model, x)
  output_strides = (8, 16, 32) if name in DILATABLE else ()

  def run(variables, x):
    train = model.apply(variables, x, train=True, mutable=['batch_stats'],
                        rngs={'dropout': jax.random.key(2)})
    evaluated = model.apply(variables, x, train=False)
    feats = {os: ctor(num_classes=None, output_stride=os).apply(
        variables, x, train=False) for os in output_strides}
    return train, evaluated, feats

  outputs = compile_and_run(run, variables, x)
  return jax.tree.map(np.asarray, (variables, *outputs))


# --- registry, parameter counts, shapes (eval_shape only) --------------------

def test_registry_holds_all_backbones():
  for name in TORCHVISION_PARAMS:
    assert name in models.MODELS


def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match='resnet50') as e:
    models.build_model('resnet51')
  assert 'mobilenet_v2' in str(e.value) and 'vgg16' in str(e.value)


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_param_count_and_logits_match_torchvision(name):
  logits, variables = shapes(models.build_model(name, num_classes=1000))
  assert num_params(variables) == TORCHVISION_PARAMS[name]
  assert logits.shape == (1, 1000) and logits.dtype == jnp.float32


def test_backbone_without_classifier_has_no_head_params():
  _, variables = shapes(models.build_model('resnet50', num_classes=None))
  assert 'fc' not in variables['params']
  assert num_params(variables) == TORCHVISION_PARAMS['resnet50'] - 2049 * 1000
  _, variables = shapes(models.build_model('mobilenet_v2', num_classes=None))
  assert not {'features_18_0', 'classifier_1'} & set(variables['params'])


@pytest.mark.parametrize('name', sorted(FEATURE_CHANNELS))
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_feature_shapes(name, output_stride):
  model = models.build_model(name, num_classes=None, output_stride=output_stride)
  feats, _ = shapes(model, batch=2)
  assert set(feats) == set(FEATURE_CHANNELS[name])
  for key, channels in FEATURE_CHANNELS[name].items():
    stride = min(int(key[len('stride'):]), output_stride)
    assert feats[key].shape == (2, 224 // stride, 224 // stride, channels), key


def test_vgg16_feature_shapes_and_conv_params():
  feats, variables = shapes(models.build_model('vgg16', num_classes=None), batch=2)
  expected = {'stride1': 64, 'stride2': 128, 'stride4': 256, 'stride8': 512,
              'stride16': 512}
  assert set(feats) == set(expected)
  for key, channels in expected.items():
    stride = int(key[len('stride'):])
    assert feats[key].shape == (2, 224 // stride, 224 // stride, channels)
  assert num_params(variables) == 14_714_688
  assert sorted(variables['params'], key=lambda k: int(k.split('_')[1])) == [
      f'features_{i}' for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]


def test_resnet_names_mirror_torchvision():
  _, variables = shapes(models.build_model('resnet50'), size=32)
  params = variables['params']
  assert {'conv1', 'bn1', 'layer1_0', 'layer4_2', 'fc'} <= set(params)
  assert set(params['layer1_0']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3',
                                     'bn3', 'downsample_conv', 'downsample_bn'}
  assert 'downsample_conv' not in params['layer1_1']
  assert params['layer2_0']['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert set(variables['batch_stats']['bn1']) == {'mean', 'var'}


def test_mobilenet_v2_names_mirror_torchvision():
  _, variables = shapes(models.build_model('mobilenet_v2'), size=32)
  params = variables['params']
  assert set(params['features_1']) == {'conv_0_0', 'conv_0_1', 'conv_1', 'conv_2'}
  assert set(params['features_2']) == {'conv_0_0', 'conv_0_1', 'conv_1_0',
                                       'conv_1_1', 'conv_2', 'conv_3'}
  assert params['features_2']['conv_1_0']['kernel'].shape == (3, 3, 1, 96)
  assert {'features_0_0', 'features_0_1', 'features_17', 'features_18_0',
          'features_18_1', 'classifier_1'} <= set(params)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'mobilenet_v2'])
def test_bad_output_stride_raises(name):
  with pytest.raises(ValueError, match='8, 16, 32'):
    shapes(models.build_model(name, output_stride=12), size=32)


def test_vgg_accepts_only_output_stride_32():
  with pytest.raises(ValueError, match='32'):
    shapes(models.build_model('vgg16', output_stride=16), size=32)


@pytest.mark.parametrize('name', sorted(TINY))
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model = TINY[name](num_classes=10, dtype=jnp.bfloat16)
  logits, variables = shapes(model, size=32)
  assert logits.dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  feats, _ = shapes(model.clone(num_classes=None), size=32)
  assert feats['stride16'].dtype == jnp.bfloat16


# --- real forwards on tiny nets -----------------------------------------------

@pytest.mark.parametrize('name', sorted(TINY))
def test_forward_train_and_eval(name):
  variables, (logits, updates), eval_logits, feats = _tiny_run(name)
  assert logits.shape == (2, 10) and np.isfinite(logits).all()
  assert eval_logits.shape == (2, 10) and np.isfinite(eval_logits).all()
  for f in feats.values():
    assert all(np.isfinite(v).all() for v in f.values())
  if name == 'vgg16':  # No BatchNorm.
    assert 'batch_stats' not in variables and not updates
    return
  assert set(updates) == {'batch_stats'}
  old = jax.tree.leaves(variables['batch_stats'])
  new = jax.tree.leaves(updates['batch_stats'])
  assert len(old) == len(new)
  # Every running variance moves; some running means legitimately stay put
  # (a 1x1 conv of a train-mode BatchNorm output has zero batch mean).
  assert all(not np.allclose(a, b) for a, b in zip(old, new))


@pytest.mark.parametrize('name', DILATABLE)
def test_dilated_features_equal_undilated_subsampled(name):
  """Same weights: a dilated map sampled at its lost stride is the OS32 map.

  Holds exactly (zero padding included) when each conv that loses stride 2
  keeps the previous dilation and later 3x3 convs use the multiplied one;
  a wrong dilation or padding anywhere breaks it.
  """
  _, _, _, feats = _tiny_run(name)
  ref = feats[32]
  for output_stride in (8, 16):
    assert set(feats[output_stride]) == set(ref)
    for key, expected in ref.items():
      step = max(1, int(key[len('stride'):]) // output_stride)
      got = feats[output_stride][key]
      assert got.shape[1] == expected.shape[1] * step
      np.testing.assert_allclose(
          got[:, ::step, ::step], expected, rtol=1e-4,
          atol=1e-5 * np.abs(expected).max(),
          err_msg=f'{key} at output_stride {output_stride}')


def test_zero_init_last_bn_and_projection_shortcut():
  conv = layers.make_conv(jnp.float32)
  norm = batchnorm.make_norm(False, jnp.float32)
  x = jnp.zeros((1, 4, 4, 8))
  blocks = {
      'basic': resnet.BasicBlock(planes=8, conv=conv, norm=norm,
                                 zero_init_last_bn=True),
      'bottleneck': resnet.Bottleneck(planes=8, conv=conv, norm=norm,
                                      zero_init_last_bn=True, strides=2),
  }
  # The 'rbg' key compiles much faster than threefry on CPU.
  params = compile_and_run(
      lambda k: {n: b.init(k, x)['params'] for n, b in blocks.items()},
      jax.random.key(0, impl='rbg'))
  assert np.all(params['basic']['bn2']['scale'] == 0)
  assert np.all(params['basic']['bn1']['scale'] == 1)
  assert np.all(params['bottleneck']['bn3']['scale'] == 0)
  assert np.all(params['bottleneck']['bn2']['scale'] == 1)
  # Projection shortcut only where the stride or the channel count changes.
  assert 'downsample_conv' not in params['basic']
  assert 'downsample_conv' in params['bottleneck']
  same = resnet.Bottleneck(planes=2, conv=conv, norm=norm)
  assert 'downsample_conv' not in jax.eval_shape(
      same.init, jax.random.key(0), x)['params']


# --- schedules and small layers ------------------------------------------------

def test_mobilenet_v2_dilation_schedule_matches_reference():
  strides = [s if j == 0 else 1
             for _, _, n, s in mobilenetv2.INVERTED_RESIDUAL_SETTING
             for j in range(n)]
  # REFERENCE.md, blocks indexed as torchvision `features` 1..17.
  os16 = dict(enumerate(layers.dilation_schedule(strides, 16, 2), start=1))
  assert [os16[k][:2] for k in (2, 4, 7)] == [(2, 1)] * 3
  assert os16[14][:2] == (1, 1)
  assert all(os16[k][:2] == (1, 2) for k in (15, 16, 17))
  os8 = dict(enumerate(layers.dilation_schedule(strides, 8, 2), start=1))
  assert [os8[k][:2] for k in (2, 4)] == [(2, 1)] * 2
  assert os8[7][:2] == (1, 1)
  assert all(os8[k][:2] == (1, 2) for k in range(8, 14))
  assert os8[14][:2] == (1, 2)
  assert all(os8[k][:2] == (1, 4) for k in (15, 16, 17))
  assert layers.dilation_schedule(strides, 32, 2) == [(s, 1, 1) for s in strides]


def test_resnet_dilation_schedule_matches_torchvision():
  # resnet50 stages start at blocks 0, 3, 7, 13. replace_stride_with_dilation
  # [False, True, True]: layer3 first block dilation 1 then 2, layer4 2 then 4.
  strides = [2 if i > 0 and j == 0 else 1
             for i, n in enumerate((3, 4, 6, 3)) for j in range(n)]
  sched = layers.dilation_schedule(strides, 8, input_stride=4)
  assert sched[3] == (2, 1, 1)
  assert sched[7] == (1, 1, 2) and sched[8] == (1, 2, 2)
  assert sched[13] == (1, 2, 4) and sched[15] == (1, 4, 4)


def test_make_divisible_matches_torchvision():
  assert [mobilenetv2.make_divisible(v) for v in (32, 16 * .5, 24 * .35, 3.2,
                                                  96 * .75, 1280 * 1.4)] == [
                                                      32, 8, 8, 8, 72, 1792]


def test_adaptive_avg_pool_matches_torch_bins():
  x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3, 1)
  y = pooling.adaptive_avg_pool(x, (3, 2))
  # H=5 -> 3 bins [0,2) [1,4) [3,5); W=3 -> 2 bins [0,2) [1,3).
  xn = np.asarray(x)
  expected = np.array([[xn[:, a:b, c:d].mean(axis=(1, 2))
                        for c, d in ((0, 2), (1, 3))]
                       for a, b in ((0, 2), (1, 4), (3, 5))])
  np.testing.assert_allclose(y, expected.transpose(2, 0, 1, 3), rtol=1e-6)


def test_max_pool_pads_with_minus_inf():
  x = -jnp.ones((1, 4, 4, 1))
  assert np.all(pooling.max_pool_3x3_s2(x) == -1)


def test_ceil_mode_stem_pool_matches_pytorch():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  for h, w in [(9, 9), (10, 7), (13, 6), (256, 256)]:
    x = rng.normal(size=(1, h, w, 2)).astype(np.float32)
    want = torch.nn.functional.max_pool2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), 3, 2, 0, ceil_mode=True)
    got = pooling.max_pool_3x3_s2_ceil(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(got), want.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize('stem, size', [('cifar', 32), ('ceil_pool', 8), ('torchvision', 8)])
def test_resnet_stems(stem, size):
  model = build_model('resnet18', num_classes=None, width=8, stem=stem)
  out = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0), x, train=False)[0], jnp.zeros((1, 32, 32, 3)))
  assert out['stride4'].shape == (1, size, size, 8)
  with pytest.raises(ValueError, match='stem'):
    jax.eval_shape(lambda x: build_model('resnet18', stem='bad').init(
        jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, 3)))
