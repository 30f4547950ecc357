"""PyTorch -> jaxres weight import: numerical parity and refusals.

Each reference model (tests/torch_reference.py) gets random weights, random
BatchNorm affine parameters and running statistics, runs in eval mode, and
its state dict is converted; the jaxres model must then compute the same
float32 outputs: logits to 1e-4 absolute (1e-3 for segmentation at 512x512),
backbone feature maps to 1e-4 relative to each map's largest value, checked
from stride 2 to 32 so a failure names the first stage that differs.
Small inputs (64x64) everywhere, plus ResNet-50 at 224 and DeepLabV3+
MobileNetV2 (OS16) at 512.
"""
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

import torch_reference as R  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxres import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxres import weights  # pylint: disable=g-import-not-at-top,wrong-import-position

SMALL = 64
LOGIT_TOL = 1e-4
SEG_512_TOL = 1e-3
FEATURE_RTOL = 1e-4
FEATURES = ('stride2', 'stride4', 'stride8', 'stride16', 'stride32')


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _images(n, size, seed=1):
  return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomized(torch_model, seed=0):
  return R.randomize_(torch_model, seed, calib_input=_images(4, SMALL, seed + 100))


def _state_dict(torch_model):
  return {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}


def _convert(state, model_name, **model_kwargs):
  model, shapes = convert.model_variables_shape(model_name, **model_kwargs)
  variables, report = convert.convert_state_dict(state, shapes)
  return model, variables, report


def _nhwc(x):
  return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _torch_out(torch_model, x, method=None):
  with torch.no_grad():
    out = (method or torch_model)(x)
  if isinstance(out, dict):
    return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}
  out = out.numpy()
  return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


def _check_logits(model, variables, torch_model, x, tol, what):
  ref = _torch_out(torch_model, x)
  out = np.asarray(model.apply(variables, _nhwc(x), train=False))
  assert out.shape == ref.shape, (what, out.shape, ref.shape)
  diff = float(np.abs(out - ref).max())
  print(f'\n{what}: max abs diff {diff:.2e} (logits up to {np.abs(ref).max():.1f})')
  assert diff < tol, f'{what}: max abs logit diff {diff:.3e} >= {tol}'


def _check_features(model, variables, torch_features, x, what):
  ref = torch_features(x)
  with torch.no_grad():
    ref = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in ref.items()}
  out = model.apply(variables, _nhwc(x), train=False)
  assert sorted(out) == sorted(ref), (sorted(out), sorted(ref))
  report = []
  for name in sorted(ref, key=lambda k: int(k[len('stride'):])):
    o, r = np.asarray(out[name]), ref[name]
    assert o.shape == r.shape, f'{what}: {name} shape {o.shape} vs torch {r.shape}'
    rel = float(np.abs(o - r).max() / max(np.abs(r).max(), 1e-6))
    report.append(f'{name} {rel:.1e}')
    assert rel < FEATURE_RTOL, (
        f'{what}: feature maps first differ at {name} (max diff {rel:.2e} of '
        f'the map\'s max); earlier maps matched: {report[:-1]}')
  print(f'\n{what} features, max diff / max value: ' + ', '.join(report))


# ----------------------------------------------------------------------------
# reference models: parameter counts (REFERENCE.md)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('build,expected', [
    (lambda: R.resnet('resnet18'), 11_689_512),
    (lambda: R.resnet('resnet34'), 21_797_672),
    (lambda: R.resnet('resnet50'), 25_557_032),
    (lambda: R.resnet('resnet101'), 44_549_160),
    (lambda: R.resnet('resnet152'), 60_192_808),
    (lambda: R.MobileNetV2(), 3_504_872),
    (lambda: R.Unet(21, 'resnet50'), 43_934_101),
    (lambda: R.Unet(21, 'vgg'), 24_892_437),
    (lambda: R.DeepLab(21, 16), 5_818_149),
    (lambda: R.DeepLab(21, 8), 5_818_149),
    (lambda: R.TorchvisionVGG(), 138_357_544),
])
def test_reference_param_counts(build, expected):
  with torch.device('meta'):  # shapes only, no memory
    assert R.num_params(build()) == expected


# ----------------------------------------------------------------------------
# classification backbones
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def resnet50_state():
  return _state_dict(_randomized(R.resnet('resnet50')))


@pytest.fixture(scope='module')
def resnet50_converted(resnet50_state):
  return _convert(resnet50_state, 'resnet50', num_classes=1000)


@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'resnet101', 'resnet152'])
def test_resnet_logits(name):
  torch_model = _randomized(R.resnet(name))
  model, variables, report = _convert(_state_dict(torch_model), name,
                                      num_classes=1000)
  assert report.layout == 'torchvision ResNet'
  assert not report.kept and not report.ignored
  _check_logits(model, variables, torch_model, _images(2, SMALL), LOGIT_TOL,
                f'{name} {SMALL}px')


def test_resnet18_features():
  torch_model = _randomized(R.resnet('resnet18', num_classes=None))
  model, variables, _ = _convert(_state_dict(torch_model), 'resnet18',
                                 num_classes=None)
  _check_features(model, variables, torch_model.feature_maps,
                  _images(2, SMALL), 'resnet18 OS32')


@pytest.mark.parametrize('size', [SMALL, 224])
def test_resnet50_logits(resnet50_state, resnet50_converted, size):
  torch_model = R.resnet('resnet50')
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in resnet50_state.items()})
  model, variables, _ = resnet50_converted
  _check_logits(model, variables, torch_model.eval(),
                _images(2 if size == SMALL else 1, size), LOGIT_TOL,
                f'resnet50 {size}px')


@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_resnet50_dilated(resnet50_state, output_stride):
  """Features at every stage and logits, torchvision replace_stride_with_dilation."""
  torch_model = R.resnet('resnet50', output_stride=output_stride)
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in resnet50_state.items()})
  torch_model.eval()
  x = _images(2, SMALL)
  backbone, shapes = convert.model_variables_shape(
      'resnet50', num_classes=None, output_stride=output_stride)
  variables, report = convert.convert_state_dict(resnet50_state, shapes,
                                                 backbone_only=True)
  assert report.ignored == ['fc.bias', 'fc.weight']
  _check_features(backbone, variables, torch_model.feature_maps, x,
                  f'resnet50 OS{output_stride}')
  if output_stride != 32:
    model, variables, _ = _convert(resnet50_state, 'resnet50', num_classes=1000,
                                   output_stride=output_stride)
    _check_logits(model, variables, torch_model, x, LOGIT_TOL,
                  f'resnet50 OS{output_stride} {SMALL}px')


def test_mobilenet_v2_logits_and_features():
  torch_model = _randomized(R.MobileNetV2())
  state = _state_dict(torch_model)
  model, variables, report = _convert(state, 'mobilenet_v2', num_classes=1000)
  assert report.layout == 'torchvision MobileNetV2'
  x = _images(2, SMALL)
  _check_logits(model, variables, torch_model, x, LOGIT_TOL,
                f'mobilenet_v2 {SMALL}px')
  # The backbone has no features.18 / classifier: load it as a backbone.
  backbone, shapes = convert.model_variables_shape('mobilenet_v2', num_classes=None)
  variables, report = convert.convert_state_dict(state, shapes, backbone_only=True)
  assert 'classifier.1.weight' in report.ignored
  assert 'features.18.0.weight' in report.ignored
  _check_features(backbone, variables, torch_model.feature_maps, x,
                  'mobilenet_v2 OS32')


@pytest.mark.parametrize('output_stride', [16, 8])
def test_mobilenet_v2_dilated_features(output_stride):
  """bubbliiiing's _nostride_dilate rule on its own MobileNetV2 layout."""
  torch_model = _randomized(R.DeepLabMobileNetV2(output_stride))
  backbone, variables, report = _convert(
      _state_dict(torch_model), 'mobilenet_v2', num_classes=None,
      output_stride=output_stride)
  assert report.layout == 'bubbliiiing MobileNetV2 (ImageNet)'
  _check_features(backbone, variables, torch_model.feature_maps,
                  _images(2, SMALL), f'mobilenet_v2 OS{output_stride}')


def test_vgg16_classifier():
  """torchvision flattens NCHW before classifier.0; jaxres flattens NHWC."""
  torch_model = _randomized(R.TorchvisionVGG(10, classifier_width=32))
  model, variables, report = _convert(_state_dict(torch_model), 'vgg16',
                                      num_classes=10, classifier_width=32)
  assert report.layout == 'torchvision VGG'
  _check_logits(model, variables, torch_model, _images(2, SMALL), LOGIT_TOL,
                f'vgg16 (classifier width 32) {SMALL}px')


# ----------------------------------------------------------------------------
# segmentation models
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def deeplab_state():
  return _state_dict(_randomized(R.DeepLab(21, 16)))


@pytest.mark.parametrize('output_stride,align_corners,size', [
    (16, True, SMALL), (16, False, SMALL), (8, True, SMALL), (8, False, SMALL),
    (16, True, 512),
])
def test_deeplabv3plus_mobilenet_v2(deeplab_state, output_stride,
                                    align_corners, size):
  torch_model = R.DeepLab(21, output_stride, align_corners=align_corners)
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in deeplab_state.items()})
  model, variables, report = _convert(
      deeplab_state, 'deeplabv3plus_mobilenet_v2', num_classes=21,
      output_stride=output_stride, align_corners=align_corners)
  assert report.layout == 'bubbliiiing DeepLabV3+ MobileNetV2 backbone'
  _check_logits(model, variables, torch_model.eval(),
                _images(2 if size == SMALL else 1, size),
                LOGIT_TOL if size == SMALL else SEG_512_TOL,
                f'deeplabv3+ mobilenet_v2 OS{output_stride} '
                f'align_corners={align_corners} {size}px')


@pytest.mark.parametrize('align_corners', [True, False])
def test_unet_vgg16(align_corners):
  torch_model = _randomized(R.Unet(21, 'vgg', align_corners=align_corners))
  model, variables, report = _convert(
      _state_dict(torch_model), 'unet_vgg16', num_classes=21,
      align_corners=align_corners)
  assert report.layout == 'bubbliiiing UNet VGG16 encoder'
  _check_logits(model, variables, torch_model, _images(2, SMALL), LOGIT_TOL,
                f'unet_vgg16 align_corners={align_corners} {SMALL}px')


@pytest.fixture(scope='module')
def unet_resnet50_state():
  return _state_dict(_randomized(R.Unet(21, 'resnet50')))


@pytest.mark.parametrize('align_corners', [True, False])
def test_unet_resnet50(unet_resnet50_state, align_corners):
  torch_model = R.Unet(21, 'resnet50', align_corners=align_corners)
  torch_model.load_state_dict(
      {k: torch.from_numpy(v) for k, v in unet_resnet50_state.items()})
  # bubbliiiing pools with MaxPool2d(3, 2, padding=0, ceil_mode=True).
  model, variables, report = _convert(
      unet_resnet50_state, 'unet_resnet50', num_classes=21,
      align_corners=align_corners, backbone_stem='ceil_pool')
  assert report.layout == 'bubbliiiing UNet ResNet encoder'
  _check_logits(model, variables, torch_model.eval(), _images(2, SMALL),
                LOGIT_TOL, f'unet_resnet50 align_corners={align_corners} {SMALL}px')


# ----------------------------------------------------------------------------
# backbone-only initialisation, jaxres checkpoints, command line
# ----------------------------------------------------------------------------


def _init(model_name, seed=0, **kwargs):
  """Stand-in for freshly initialised variables: random arrays of the right
  shapes (no compile), distinct from anything converted."""
  rng = np.random.default_rng(seed)
  _, shapes = convert.model_variables_shape(model_name, **kwargs)
  return jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def _leaves(tree):
  return {'/'.join(p): np.asarray(v)
          for p, v in weights.flatten(tree).items()}


def test_backbone_only_from_torchvision_classifier(tmp_path):
  """torchvision mobilenet_v2 ImageNet file -> DeepLabV3+ encoder, head fresh."""
  torch_model = _randomized(R.MobileNetV2(), seed=3)
  path = str(tmp_path / 'mobilenet_v2.pth')
  torch.save(torch_model.state_dict(), path)
  target = _init('deeplabv3plus_mobilenet_v2', num_classes=5)
  logs = []
  merged = convert.load_pretrained(path, target, 'deeplabv3plus_mobilenet_v2',
                                   backbone_only=True, log=logs.append)
  assert 'torchvision MobileNetV2' in logs[0] and 'classifier.1.weight' in logs[0]
  _, direct, _ = _convert(_state_dict(torch_model), 'mobilenet_v2', num_classes=1000)
  got, fresh, want = _leaves(merged), _leaves(target), _leaves(direct)
  assert got.keys() == fresh.keys()
  for name, value in got.items():
    if name.split('/')[1] == 'backbone':
      np.testing.assert_array_equal(
          value, want[name.replace('backbone/', '', 1)], err_msg=name)
    else:
      np.testing.assert_array_equal(value, fresh[name], err_msg=name)


def test_cli_convert_and_load(tmp_path):
  torch_model = _randomized(R.resnet('resnet18'), seed=5)
  src = str(tmp_path / 'resnet18.pth')
  torch.save({'state_dict': {f'module.{k}': v
                             for k, v in torch_model.state_dict().items()},
              'epoch': 90}, src)
  out = str(tmp_path / 'converted')
  argv = ['--model=resnet18', '--num_classes=1000', f'--input={src}',
          f'--output={out}']
  assert convert.main(argv) == 0
  assert os.path.exists(os.path.join(out, convert.METADATA_FILE))
  assert convert.main(argv) == 1  # refuses to overwrite

  target = _init('resnet18', num_classes=1000)
  merged = convert.load_pretrained(out, target, 'resnet18', log=lambda s: None)
  model, _ = convert.model_variables_shape('resnet18', num_classes=1000)
  _check_logits(model, merged, torch_model, _images(2, SMALL), LOGIT_TOL,
                'resnet18 via CLI checkpoint')

  # The same checkpoint into a 10-class model: whole model refused with the
  # cause, backbone only keeps the fresh 10-class fc.
  target10 = _init('resnet18', num_classes=10)
  with pytest.raises(convert.ConvertError, match=r'params/fc/kernel.*num_classes'):
    convert.load_pretrained(out, target10, 'resnet18', log=lambda s: None)
  partial = convert.load_pretrained(out, target10, 'resnet18',
                                    backbone_only=True, log=lambda s: None)
  for name, value in _leaves(partial).items():
    want = _leaves(target10 if '/fc/' in name else merged)[name]
    np.testing.assert_array_equal(value, want, err_msg=name)


def test_load_from_training_checkpoint(tmp_path):
  """init_from may name a trainer's workdir (Orbax CheckpointManager)."""
  optax = pytest.importorskip('optax')
  from jaxres import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from jaxres import train_state  # pylint: disable=g-import-not-at-top
  saved = _init('resnet18', seed=1, num_classes=10)
  state = train_state.TrainState.create(
      apply_fn=None, params=saved['params'], tx=optax.sgd(0.1, momentum=0.9),
      batch_stats=saved['batch_stats'])
  manager = ckpt_lib.make_manager(str(tmp_path / 'checkpoints'), max_to_keep=1,
                                  async_save=False)
  ckpt_lib.save(manager, 7, state, {'model': 'resnet18'})
  manager.wait_until_finished()
  target = _init('resnet18', seed=2, num_classes=3)
  logs = []
  merged = convert.load_pretrained(str(tmp_path), target, 'resnet18',
                                   backbone_only=True, log=logs.append)
  for name, value in _leaves(merged).items():
    want = _leaves(target if '/fc/' in name else saved)[name]
    np.testing.assert_array_equal(value, want, err_msg=name)
  # The same through the manager's directory and through one step of it.
  for path in (tmp_path / 'checkpoints', tmp_path / 'checkpoints' / '7'):
    again = convert.load_pretrained(str(path), target, 'resnet18',
                                    backbone_only=True, log=logs.append)
    for name, value in _leaves(again).items():
      np.testing.assert_array_equal(value, _leaves(merged)[name], err_msg=name)
  with pytest.raises(convert.ConvertError,
                     match=r'params/fc/bias: checkpoint \(10,\), model \(3,\)'):
    convert.load_pretrained(str(tmp_path), target, 'resnet18', log=logs.append)


def test_not_a_checkpoint_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('not weights')
  with pytest.raises(convert.ConvertError, match='neither a converted'):
    convert.load_pretrained(str(tmp_path), {'params': {}}, 'resnet18',
                            log=lambda s: None)


def test_every_model_names_its_torch_weights():
  """Each registered model's backbone has a PyTorch layout in its model file."""
  from jaxres import models  # pylint: disable=g-import-not-at-top
  for name in sorted(models.MODELS):
    params = convert.model_variables_shape(name, num_classes=3)[1]['params']
    backbone = weights.backbone_module(params.get('backbone', params))
    assert weights.layouts(backbone), name


def test_safetensors(tmp_path):
  safetensors_torch = pytest.importorskip('safetensors.torch')
  torch_model = _randomized(R.resnet('resnet18'), seed=6)
  path = str(tmp_path / 'resnet18.safetensors')
  safetensors_torch.save_file(
      {k: v.contiguous() for k, v in torch_model.state_dict().items()}, path)
  state, notes = convert.read_state_dict(path)
  assert not notes
  model, variables, _ = _convert(state, 'resnet18', num_classes=1000)
  _check_logits(model, variables, torch_model, _images(1, SMALL), LOGIT_TOL,
                'resnet18 from safetensors')


# ----------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def resnet18_state():
  return _state_dict(R.resnet('resnet18'))


@pytest.fixture(scope='module')
def resnet18_shapes():
  return convert.model_variables_shape('resnet18', num_classes=1000)[1]


def test_unexpected_key_named(resnet18_state, resnet18_shapes):
  state = dict(resnet18_state, **{'layer5.0.conv1.weight': np.zeros((1,))})
  with pytest.raises(convert.ConvertError,
                     match=r'1 unexpected key\(s\): layer5\.0\.conv1\.weight'):
    convert.convert_state_dict(state, resnet18_shapes)
  # Allowed explicitly: then it is only reported.
  _, report = convert.convert_state_dict(state, resnet18_shapes,
                                         allow_unexpected=['layer5.*'])
  assert report.ignored == ['layer5.0.conv1.weight']


def test_missing_key_named(resnet18_state, resnet18_shapes):
  state = dict(resnet18_state)
  del state['layer3.1.bn2.running_var']
  with pytest.raises(convert.ConvertError) as e:
    convert.convert_state_dict(state, resnet18_shapes)
  assert 'layer3.1.bn2.running_var (for batch_stats/layer3_1/bn2/var' in str(e.value)


def test_shape_mismatch_names_num_classes(resnet18_shapes):
  state = _state_dict(R.resnet('resnet18', num_classes=10))
  with pytest.raises(convert.ConvertError) as e:
    convert.convert_state_dict(state, resnet18_shapes)
  msg = str(e.value)
  assert 'fc.weight: checkpoint (10, 512), model (1000, 512)' in msg
  assert 'num_classes' in msg and 'checkpoint has 10 classes' in msg


def test_wrong_model_refused(resnet18_shapes):
  state = _state_dict(R.resnet('resnet34'))
  with pytest.raises(convert.ConvertError, match=r'unexpected key.*layer1\.2\.conv1'):
    convert.convert_state_dict(state, resnet18_shapes)


class _Payload:  # pickled by reference: loading it would run this module

  def __init__(self):
    self.weights = 1


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_arbitrary_pickle_refused(tmp_path):
  path = str(tmp_path / 'model.pth')
  torch.save({'model': _Payload(), 'conv1.weight': torch.zeros(1)}, path)
  with pytest.raises(convert.ConvertError,
                     match=r'arbitrary-code unpickling.*_Payload'):
    convert.read_state_dict(path)
  with open(str(tmp_path / 'plain.pkl'), 'wb') as f:
    pickle.dump({'a': _Payload()}, f)
  with pytest.raises(convert.ConvertError, match='arbitrary-code'):
    convert.read_state_dict(str(tmp_path / 'plain.pkl'))


def test_whole_module_refused(tmp_path):
  path = str(tmp_path / 'whole.pth')
  torch.save(R.resnet('resnet18'), path)
  with pytest.raises(convert.ConvertError, match=r'torch\.save\(model\)'):
    convert.read_state_dict(path)


@pytest.mark.parametrize('obj,match', [
    ([torch.zeros(2)], 'holds a list, not a state dict'),
    (torch.zeros(2), 'holds a Tensor, not a state dict'),
    ({'epoch': 3, 'lr': 0.1}, r"entries \['epoch', 'lr'\] are not tensors"),
])
def test_non_state_dict_refused(tmp_path, obj, match):
  path = str(tmp_path / 'x.pth')
  torch.save(obj, path)
  with pytest.raises(convert.ConvertError, match=match):
    convert.read_state_dict(path)


def test_nesting_and_prefix_unwrapped(tmp_path):
  path = str(tmp_path / 'ckpt.pth')
  torch.save({'model': {'module.conv1.weight': torch.zeros(2)},
              'optimizer': {'state': {}}, 'epoch': 3}, path)
  state, notes = convert.read_state_dict(path)
  assert list(state) == ['conv1.weight']
  assert "nested under 'model'" in notes[0] and 'optimizer' in notes[0]
  assert "'module.'" in notes[1]


def test_cli_bad_input_exits_nonzero(tmp_path):
  path = str(tmp_path / 'model.pth')
  torch.save({'model': _Payload()}, path)
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  proc = subprocess.run(
      [sys.executable, '-m', 'jaxres.convert', '--model=resnet18',
       '--num_classes=1000', f'--input={path}', f'--output={tmp_path / "out"}'],
      capture_output=True, text=True, env=env, check=False)
  assert proc.returncode == 1
  assert 'arbitrary-code unpickling' in proc.stderr
  assert not os.path.exists(tmp_path / 'out')


def test_missing_init_from_refused():
  with pytest.raises(convert.ConvertError, match='does not exist'):
    convert.load_pretrained('/nonexistent/weights.pth', {'params': {}},
                            'resnet18', log=lambda s: None)
