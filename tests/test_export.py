"""jaxres.export: ONNX / SavedModel / StableHLO exports reproduce jaxres.

Each family (ResNet, MobileNetV2, UNet, DeepLabV3+) is saved at a tiny width
as a real training checkpoint (jaxres.checkpoint.save of a TrainState, with
its meta and checksums), exported through the command's main(), and the
command's own parity check (two batch sizes, max abs difference <= 1e-4) must
pass. BatchNorm statistics are perturbed so that inference-mode BatchNorm is
what is being checked.
"""
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxres import checkpoint as ckpt_lib
from jaxres import convert
from jaxres import export
from jaxres import export_formats
from jaxres import models
from jaxres.train_state import TrainState

SIZE = 32
FAMILIES = {
    'resnet': ('resnet18', 5, dict(width=8, stage_sizes=(1, 1, 1, 1))),
    'mobilenet': ('mobilenet_v2', 5, dict(width_mult=0.25)),
    'unet': ('unet_vgg16', 3, dict(backbone_width=4,
                                   decoder_filters=(4, 8, 8, 8))),
    'deeplab': ('deeplabv3plus_mobilenet_v2', 3, dict(
        backbone_width=0.25, aspp_features=8, shortcut_features=4,
        decoder_features=8)),
}


def _variables(name, num_classes, kwargs):
  """The model and random (params, batch_stats), drawn in numpy.

  Shapes come from jax.eval_shape: nothing is compiled before the export.
  Kernels are He-normal, BatchNorm statistics off their initial 0 / 1 so
  that inference-mode BatchNorm is what the parity check sees.
  """
  model = models.build_model(name, num_classes=num_classes, **kwargs)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  rng = np.random.default_rng(0)

  def draw(path, x):
    kind = path[-1].key
    if kind == 'kernel':
      fan_in = int(np.prod(x.shape[:-1]))
      return rng.normal(0, np.sqrt(2 / fan_in), x.shape).astype(np.float32)
    if kind in ('bias', 'mean'):
      return rng.normal(0, 0.1, x.shape).astype(np.float32)
    return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)  # scale, var
  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  return model, variables['params'], variables.get('batch_stats', {})


def _save_run(workdir, family, step=7, meta_classes='model'):
  name, num_classes, kwargs = FAMILIES[family]
  model, params, batch_stats = _variables(name, num_classes, kwargs)
  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=optax.sgd(0.1), batch_stats=batch_stats)
  meta = {'task': ('segmentation' if 'backbone' in params
                   else 'classification'),
          'model': name, 'optimizer': 'sgd', 'model_kwargs': kwargs,
          'num_classes': num_classes if meta_classes == 'model' else None}
  manager = ckpt_lib.make_manager(os.path.join(workdir, 'checkpoints'),
                                  max_to_keep=None)
  ckpt_lib.save(manager, step, state, meta, force=True)
  manager.wait_until_finished()
  manager.close()
  return str(workdir)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  cache = {}

  def get(family):
    if family not in cache:
      cache[family] = _save_run(tmp_path_factory.mktemp(family), family)
    return cache[family]
  return get


def _export(capsys, *args):
  code = export.main(list(args))
  out, err = capsys.readouterr()
  return code, out, err


def _needs(fmt):
  for module, _ in export.RUNTIMES[fmt]:
    pytest.importorskip(module, reason=f'--format={fmt} needs {module} '
                        '(requirements-export.txt)')


# Every family exported once or twice, every format on at least two families,
# each option at least once (ONNX conversion is the slow part: ~5-15 s each).
CASES = [
    ('resnet', 'onnx', ()),
    ('resnet', 'savedmodel', ('--preprocess',)),
    ('mobilenet', 'stablehlo', ('--preprocess',)),
    ('unet', 'onnx', ('--image_size=32,64',)),
    ('unet', 'savedmodel', ('--seg_output=mask',)),
    ('deeplab', 'onnx', ('--seg_output=mask', '--preprocess')),
    ('deeplab', 'stablehlo', ()),
]


@pytest.mark.parametrize('family,fmt,extra', CASES,
                         ids=['-'.join((c[0], c[1]) + c[2]) for c in CASES])
def test_export_matches_jaxres(run_dir, tmp_path, capsys, family, fmt, extra):
  _needs(fmt)
  output = str(tmp_path / f'model.{fmt}')
  code, out, err = _export(capsys, f'--workdir={run_dir(family)}',
                           f'--format={fmt}', f'--output={output}',
                           f'--image_size={SIZE}', '--platforms=cpu', *extra)
  assert code == 0, err
  assert os.path.exists(output)
  assert 'batch 1:' in out and 'batch 3:' in out
  for line in out.splitlines():
    if 'max abs difference' in line:
      assert float(line.split('difference ')[1].split()[0]) <= 1e-4, line
  if '--seg_output=mask' in extra:
    assert '0 outside near-ties' in out
  # The file runs on its own, at another batch size, with the right output.
  spec = export_formats.InputSpec(
      *([32, 64] if '--image_size=32,64' in extra else [SIZE, SIZE]),
      np.dtype(np.uint8 if '--preprocess' in extra else np.float32))
  y = getattr(export_formats, f'load_{fmt}')(output)(
      export.sample_images(spec, 2, seed=5))
  num_classes = FAMILIES[family][1]
  if '--seg_output=mask' in extra:
    assert y.shape == (2, spec.height, spec.width) and y.dtype == np.int32
  elif family in ('unet', 'deeplab'):
    assert y.shape == (2, spec.height, spec.width, num_classes)
  else:
    assert y.shape == (2, num_classes)


def test_converted_weights_directory(tmp_path, capsys):
  name, num_classes, kwargs = FAMILIES['resnet']
  _, params, batch_stats = _variables(name, num_classes, kwargs)
  weights = str(tmp_path / 'weights')
  convert.save_converted(
      weights, jax.tree.map(np.asarray, {'params': params,
                                         'batch_stats': batch_stats}),
      {'model': name, 'num_classes': num_classes, 'model_kwargs': kwargs})
  code, out, err = _export(capsys, f'--workdir={weights}', '--format=stablehlo',
                           f'--output={tmp_path / "m.stablehlo"}',
                           f'--image_size={SIZE}', '--platforms=cpu')
  assert code == 0, err
  assert 'converted weights' in out


def test_refusals(run_dir, tmp_path, capsys, monkeypatch):
  run = run_dir('resnet')
  out_path = str(tmp_path / 'm.stablehlo')
  base = ('--format=stablehlo', f'--output={out_path}', f'--image_size={SIZE}')
  empty = tmp_path / 'empty_run'
  empty.mkdir()
  cases = [
      ((f'--workdir={empty}',), 'No checkpoint'),
      ((f'--workdir={run}', '--model=resnet50'), 'another model'),
      ((f'--workdir={run}', '--num_classes=1000'), 'another model'),
      ((f'--workdir={run}', '--step=3'), 'available: [7]'),
      ((f'--workdir={run}', '--ema'), 'no EMA weights'),
      ((f'--workdir={run}', '--seg_output=mask'), 'segmentation models'),
  ]
  for args, message in cases:
    code, _, err = _export(capsys, *args, *base)
    assert code == 2 and message in err, (args, err)
  assert not os.path.exists(out_path)

  open(out_path, 'w').close()
  code, _, err = _export(capsys, f'--workdir={run}', *base)
  assert code == 2 and '--overwrite' in err

  damaged = tmp_path / 'damaged_run'
  shutil.copytree(run, damaged)
  checksums = damaged / 'checkpoints' / '7' / 'checksums' / 'metadata'
  saved = json.loads(checksums.read_text())
  saved['params/conv1/kernel'] = '00000000'
  checksums.write_text(json.dumps(saved))
  code, _, err = _export(capsys, f'--workdir={damaged}', *base, '--overwrite')
  assert code == 2 and 'checksum mismatch' in err, err

  monkeypatch.setitem(export.RUNTIMES, 'stablehlo',
                      (('no_such_runtime_xyz', 'no-such-runtime==1.0'),))
  code, _, err = _export(capsys, f'--workdir={run}', *base, '--overwrite')
  assert code == 2 and 'pip install no-such-runtime==1.0' in err


def test_parity_failure_fails_and_moves_the_file(run_dir, tmp_path, capsys,
                                                 monkeypatch):
  output = str(tmp_path / 'm.stablehlo')
  load = export_formats.load_stablehlo
  monkeypatch.setattr(
      export_formats, 'load_stablehlo',
      lambda path: (lambda images, run=load(path): run(images) + 1e-3))
  code, _, err = _export(capsys, f'--workdir={run_dir("resnet")}',
                         '--format=stablehlo', f'--output={output}',
                         f'--image_size={SIZE}', '--platforms=cpu')
  assert code == 1 and 'does not reproduce' in err
  assert not os.path.exists(output) and os.path.exists(output + '.failed')


def test_class_count_from_the_dataset_record(tmp_path):
  """A run trained with config.num_classes=None (the dataset's count) records
  None in its checkpoint meta and the count in dataset.json."""
  from jaxres import export_loader  # pylint: disable=g-import-not-at-top
  workdir = _save_run(tmp_path, 'resnet', meta_classes=None)
  with pytest.raises(ckpt_lib.CheckpointError, match='fc.*model missing'):
    export_loader.load_trained(workdir)
  with open(os.path.join(workdir, 'dataset.json'), 'w') as f:
    json.dump({'task': 'classification', 'num_classes': 5}, f)
  trained = export_loader.load_trained(workdir)
  assert trained.meta['num_classes'] == 5
  assert trained.variables['params']['fc']['kernel'].shape[-1] == 5
