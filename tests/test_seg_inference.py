"""Inference modes: slide, scales and flip against a slow numpy reference;
whole mode unchanged; 8 devices equal 1; the predict command with slide."""
import functools
import json
import subprocess
import sys
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import helpers
from configs import seg_quickstart
from jaxres import config_checks
from jaxres import predict
from jaxres import seg_inference
from jaxres.sharding import DataParallel
from jaxres.tasks import seg_eval
from jaxres.tasks import segmentation

NUM_CLASSES = 4
_W = np.random.default_rng(0).normal(size=(3, 3, 3, NUM_CLASSES)).astype(
    np.float32)


def _net(x, w, xp):
  """A 3x3 conv (zero padding) + tanh: its windows differ from the whole."""
  h, wd = x.shape[1:3]
  padded = xp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = sum(padded[:, i:i + h, j:j + wd] @ w[i, j]
            for i in range(3) for j in range(3))
  return xp.tanh(out) * 3.0


jax_net = functools.partial(_net, w=jnp.asarray(_W), xp=jnp)
numpy_net = functools.partial(_net, w=_W, xp=np)


def reference_slide(x, crop, stride):
  """mmseg's slide_inference, one window at a time, in numpy."""
  b, height, width, _ = x.shape
  total = np.zeros((b, height, width, NUM_CLASSES), np.float64)
  count = np.zeros((height, width))
  rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
  cols = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
  for r in range(rows):
    for c in range(cols):
      y2, x2 = min(r * stride[0] + crop[0], height), min(
          c * stride[1] + crop[1], width)
      y1, x1 = max(y2 - crop[0], 0), max(x2 - crop[1], 0)
      total[:, y1:y2, x1:x2] += numpy_net(x[:, y1:y2, x1:x2])
      count[y1:y2, x1:x2] += 1
  assert count.min() >= 1
  return total / count[None, :, :, None]


def _resize(x, size):
  return np.asarray(jax.image.resize(
      x, (x.shape[0], *size, x.shape[-1]), 'linear', antialias=False))


def reference_tta(x, run, scales, flip):
  """log of the mean softmax over scales (and mirrors), in numpy."""
  height, width = x.shape[1:3]
  probs = []
  for s in scales:
    size = (int(height * s + 0.5), int(width * s + 0.5))
    xs = _resize(x, size) if size != (height, width) else x
    for flipped in ([False, True] if flip else [False]):
      out = run(xs[:, :, ::-1] if flipped else xs)
      out = out[:, :, ::-1] if flipped else out
      out = _resize(out.astype(np.float32), (height, width))
      e = np.exp(out - out.max(-1, keepdims=True))
      probs.append(e / e.sum(-1, keepdims=True))
  return np.log(np.mean(probs, axis=0))


def _images(b, h, w, seed=0):
  return np.random.default_rng(seed).normal(size=(b, h, w, 3)).astype(
      np.float32)


def test_window_starts_end_at_the_edge():
  assert seg_inference.window_starts(20, 8, 5) == [0, 5, 10, 12]
  assert seg_inference.window_starts(16, 8, 4) == [0, 4, 8]
  assert seg_inference.window_starts(6, 8, 5) == [0]  # Shorter than the crop.
  assert seg_inference.window_starts(1024, 512, 341) == [0, 341, 512]
  assert seg_inference.window_starts(2048, 512, 341) == [
      0, 341, 682, 1023, 1364, 1536]


@pytest.mark.parametrize('shape,crop,stride,batch', [
    ((2, 20, 27), (8, 12), (5, 7), 3),  # Remainder windows; 2 padding slots.
    ((1, 6, 27), (8, 12), (5, 12), 8),  # Shorter than the crop; stride=crop.
])
def test_slide_matches_the_numpy_reference(shape, crop, stride, batch):
  x = _images(*shape)
  mode = seg_inference.InferenceMode('slide', crop, stride, batch)
  got = jax.jit(lambda x: seg_inference.logits(jax_net, x, mode))(x)
  np.testing.assert_allclose(got, reference_slide(x, crop, stride),
                             atol=2e-5, rtol=1e-5)
  # Not the whole-image logits: the zero padding of each window shows.
  assert not np.allclose(got, numpy_net(x), atol=1e-3)


def test_scales_and_flip_compose_with_slide_and_whole():
  x = _images(2, 16, 20, seed=1)
  scales = (0.5, 1.0, 1.25)
  for mode, run in [
      (seg_inference.InferenceMode('whole', scales=scales, flip=True),
       numpy_net),
      (seg_inference.InferenceMode('slide', (8, 8), (6, 5), 4, scales, True),
       lambda x: reference_slide(x, (8, 8), (6, 5)))]:
    got = jax.jit(lambda x, mode=mode: seg_inference.logits(jax_net, x, mode))(
        x)
    np.testing.assert_allclose(got, reference_tta(x, run, scales, True),
                               atol=3e-5, rtol=1e-4)
  # log of probabilities: what cross-entropy and argmax read as logits.
  np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict
  apply_fn: object = flax.struct.field(pytree_node=False)


def _apply(variables, x, train):
  assert not train
  return _net(x, variables['params']['w'], jnp)


def _batch(b=8, h=20, w=27):
  rng = np.random.default_rng(3)
  return {'image': _images(b, h, w, seed=2),
          'label': rng.integers(0, NUM_CLASSES + 1, (b, h, w)).astype(np.int32),
          'label_hw': np.tile(np.asarray([[h, w]], np.int32), (b, 1)),
          'mask': np.asarray([1] * (b - 1) + [0], np.float32)}


def _old_eval_logits(state, batch):
  """How eval_step computed logits before inference modes existed."""
  return state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      batch['image'], train=False)


def test_whole_mode_is_the_old_eval_step_exactly():
  state = _State({'w': jnp.asarray(_W)}, {}, _apply)
  batch = _batch(2)
  step = functools.partial(seg_eval.eval_step, num_classes=NUM_CLASSES,
                           ignore_label=255, resize_logits=False)
  config = seg_quickstart.get_config()
  assert seg_inference.from_config(config) == seg_inference.WHOLE
  # The same computation, not merely close: identical jaxprs of the logits.
  new = jax.make_jaxpr(lambda s, b: seg_inference.logits(
      lambda x: _old_eval_logits(s, {'image': x}), b['image'],
      seg_inference.from_config(config)))(state, batch)
  old = jax.make_jaxpr(_old_eval_logits)(state, batch)
  assert str(new) == str(old)
  sums, _ = jax.jit(step)(state, batch)
  assert int(sums['count']) == 1


def test_slide_eval_on_8_devices_equals_1():
  assert jax.device_count() == 8
  state = _State({'w': jnp.asarray(_W)}, {}, _apply)
  batch = _batch()
  mode = seg_inference.InferenceMode('slide', (8, 12), (5, 7), 3, (0.75, 1.0),
                                     True)
  step = functools.partial(seg_eval.eval_step, num_classes=NUM_CLASSES,
                           ignore_label=255, resize_logits=False,
                           inference=mode)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    dp = DataParallel.create(8, devices=devices)
    fn = jax.jit(step, in_shardings=(dp.replicated, dp.batch),
                 out_shardings=(dp.replicated, dp.batch))
    sums, predictions = fn(jax.device_put(state, dp.replicated),
                           dp.shard_batch(batch))
    assert len(predictions.sharding.device_set) == len(devices)
    results.append(jax.device_get((sums, predictions)))
  (sums1, pred1), (sums8, pred8) = results
  np.testing.assert_array_equal(sums1['confusion'], sums8['confusion'])
  np.testing.assert_allclose(sums1['loss'], sums8['loss'], rtol=1e-5)
  np.testing.assert_array_equal(pred1, pred8)
  # And the logits behind them are the numpy reference's.
  logits = reference_tta(
      batch['image'], lambda x: reference_slide(x, (8, 12), (5, 7)),
      (0.75, 1.0), True)
  np.testing.assert_array_equal(pred1[:7], logits.argmax(-1)[:7])


def test_config_checks_name_the_field():
  config = seg_quickstart.get_config()
  with config.unlocked():
    config.inference = 'tiles'
    config.slide_crop = 64
    config.slide_stride = (32, 96)
    config.slide_batch = 0
    config.inference_scales = (1.0, -0.5)
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check_config(config)
  for text in ("inference='tiles'", 'slide_stride=(32, 96) must be <= '
               'slide_crop=64', 'slide_batch=0', 'inference_scales'):
    assert text in str(e.value)
  with config.unlocked():
    config.inference = 'slide'
    config.crop_size = 64  # Set here: the quickstart's own crop may change.
    config.slide_crop = None
    config.slide_stride = None
    config.slide_batch = 2
    config.inference_scales = (1.0,)
  mode = seg_inference.from_config(config)  # crop_size 64, stride 2/3.
  assert (mode.crop, mode.stride, mode.batch) == ((64, 64), (42, 42), 2)
  # The trainer's eval step runs in the config's mode.
  ds = types.SimpleNamespace(num_classes=6, ignore_label=255)
  step, _ = segmentation.Segmentation(config).eval_step(
      ds, DataParallel.create(8))
  inner = step.args[0]  # The task drops training-only variables first.
  assert inner.keywords['inference'] == mode
  with config.unlocked():
    config.slide_stride = 80  # Larger than the default window, crop_size.
  with pytest.raises(config_checks.ConfigError,
                     match='slide_stride=80 must be <= crop_size=64'):
    config_checks.check_config(config)
  with pytest.raises(predict.PredictError, match='not a size'):
    predict.with_inference_flags(config, slide_crop='big')


_TINY_SEG = ('--config=configs/seg_quickstart.py',
             '--config.model_kwargs.backbone_width=4',
             '--config.model_kwargs.decoder_filters=(8,8,8,8)',
             '--config.num_classes=3', '--config.crop_size=32')


def test_predict_command_with_slide(tmp_path):
  """A tiny UNet checkpoint (numpy weights, saved as the trainer does)."""
  config = helpers.tiny_seg_config()
  run = tmp_path / 'run'
  helpers.save_random_checkpoint(run, config, 3, step=1)
  (run / 'dataset.json').write_text(json.dumps(
      {'task': 'segmentation', 'num_classes': 3, 'ignore_label': 255,
       'class_names': ['bg', 'a', 'b'], 'image_shape': [32, 32, 3]}))
  inputs = tmp_path / 'in'
  inputs.mkdir()
  Image.fromarray(np.random.default_rng(1).integers(
      0, 255, (40, 50, 3), np.uint8)).save(inputs / 'x.png')
  proc = subprocess.run(
      [sys.executable, '-m', 'jaxres.predict', *_TINY_SEG,
       f'--workdir={run}', f'--input={inputs}', f'--output={tmp_path}/out',
       '--inference=slide', '--slide_crop=32', '--slide_stride=16',
       '--slide_batch=4', '--inference_flip', '--verbose'],
      cwd=helpers.ROOT, env=helpers.env(), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'slide (crop 32x32, stride 16x16, 4 windows/step), scales (1.0,) + ' \
      'flip' in proc.stderr, proc.stderr[-3000:]
  mask = Image.open(tmp_path / 'out' / 'x_mask.png')
  assert mask.size == (50, 40) and set(np.unique(np.asarray(mask))) <= {0, 1, 2}
  bad = subprocess.run(
      [sys.executable, '-m', 'jaxres.predict', *_TINY_SEG,
       f'--workdir={run}', f'--input={inputs}', f'--output={tmp_path}/bad',
       '--inference=slide', '--slide_crop=16', '--slide_stride=32'],
      cwd=helpers.ROOT, env=helpers.env(), capture_output=True, text=True,
      timeout=300)
  assert bad.returncode == 2 and 'slide_stride=32 must be <=' in bad.stderr, (
      bad.stderr[-3000:])
  assert 'Traceback' not in bad.stderr
