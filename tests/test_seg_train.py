"""The segmentation trainer: freezing, resize-back, train + eval + predict."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import seg_quickstart
from tests import helpers
from jaxres import checkpoint as ckpt_lib
from jaxres import predict, runner, seg_losses
from jaxres.tasks import seg_eval, segmentation
from jaxres.data import shapes


# ---------------------------------------------------------------------------
# Backbone freezing on a toy model (compiles in a moment).
# ---------------------------------------------------------------------------

class _Backbone(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3))(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))


class _ToySegmenter(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _Backbone(name='backbone')(x, train=train)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.5)(y)
    return nn.Conv(self.num_classes, (1, 1), name='head')(y).astype(jnp.float32)


def _toy_config(**overrides):
  c = seg_quickstart.get_config()
  c.unlock()
  c.optimizer = 'sgd'
  c.weight_decay = 1e-2
  c.grad_clip_norm = 10.0
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


def _toy_run(freeze_steps, bn_train_mode, num_steps):
  config = _toy_config()
  lr_fn = lambda count: 0.1
  state = segmentation.build_state(config, _ToySegmenter(), (8, 8, 3),
                                freeze_steps, lr_fn, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
           'label': rng.integers(0, 3, (4, 8, 8)).astype(np.int32)}
  step = functools.partial(
      segmentation.train_step, loss_fn=seg_losses.make_loss_fn(config),
      lr_fn=lr_fn, num_classes=3, ignore_label=255,
      backbone_bn_train=bn_train_mode)
  frozen = jax.jit(functools.partial(step, frozen_backbone=True))
  free = jax.jit(functools.partial(step, frozen_backbone=False))
  states = [state]
  for i in range(num_steps):
    fn = frozen if i < freeze_steps else free
    state, _ = fn(state, batch, jax.random.key(1))
    states.append(state)
  return states


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_frozen_backbone_bn_modes_and_unfreezing():
  # Inference-mode BN while frozen: backbone params AND statistics untouched.
  s = _toy_run(freeze_steps=2, bn_train_mode=False, num_steps=3)
  assert _same(s[0].params['backbone'], s[2].params['backbone'])
  assert _same(s[0].batch_stats['backbone'], s[2].batch_stats['backbone'])
  assert not _same(s[0].params['head'], s[2].params['head'])
  assert not _same(s[0].batch_stats['BatchNorm_0'], s[2].batch_stats['BatchNorm_0'])
  # After the freeze the backbone trains.
  assert not _same(s[2].params['backbone'], s[3].params['backbone'])
  # Train-mode BN while frozen: statistics move, params do not.
  t = _toy_run(freeze_steps=2, bn_train_mode=True, num_steps=2)
  assert _same(t[0].params['backbone'], t[2].params['backbone'])
  assert not _same(t[0].batch_stats['backbone'], t[2].batch_stats['backbone'])
  assert int(s[3].step) == 3


def test_resize_to_labels_matches_resize_per_example():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  label_hw = np.array([[12, 20], [5, 6]], np.int32)
  out = np.asarray(jax.jit(seg_eval.resize_to_labels, static_argnums=2)(
      logits, label_hw, (16, 24)))
  for i, (h, w) in enumerate(label_hw):
    ref = jax.image.resize(logits[i], (h, w, 3), 'bilinear', antialias=False)
    np.testing.assert_allclose(out[i, :h, :w], ref, atol=1e-5)


# ---------------------------------------------------------------------------
# End to end on the embedded shapes data.
# ---------------------------------------------------------------------------

def _tiny_config(**overrides):
  c = seg_quickstart.get_config()
  c.unlock()
  c.model = 'unet_vgg16'
  c.model_kwargs = ml_collections.ConfigDict(
      {'backbone_width': 4, 'decoder_filters': (8, 16, 16, 16),
       'align_corners': True})
  c.num_classes = 2  # background + circle
  c.image_size = 32
  c.crop_size = 32
  c.shapes_train_size = 160
  c.shapes_eval_size = 50  # 4 eval batches of 16, the last one padded.
  c.batch_size = 16
  c.eval_batch_size = 16
  c.losses = 'ce+dice'
  c.class_weights = (1.0, 3.0)
  c.learning_rate = 2e-3
  c.schedule = 'constant'
  c.num_train_epochs = None
  c.num_train_steps = 200
  c.warmup_epochs = None
  c.warmup_steps = 10
  c.log_every_steps = 100
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 100
  c.label_check_files = 20
  c.num_eval_images = 2
  c.compilation_cache_dir = helpers.xla_cache_dir()
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


def test_train_eval_predict(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  config = _tiny_config()
  metrics = runner.run(config, workdir)
  assert metrics['eval_examples'] == 50  # Every example exactly once.

  # Predicting background everywhere scores the background IoU / 2.
  _, masks = shapes.make_segmentation(50, 32, 1, 2)
  valid = masks != 255
  baseline = np.mean(masks[valid] == 0) / 2
  assert metrics['eval_miou'] > baseline + 0.1, (metrics, baseline)
  assert os.path.exists(os.path.join(workdir, 'dataset.json'))

  # Eval-only restores the checkpoint and reproduces the evaluation.
  again = runner.run(config, workdir, mode='eval')
  assert again['eval_miou'] == pytest.approx(metrics['eval_miou'])
  # Evaluating at a fixed input size resizes the logits back to each label.
  resized = runner.run(_tiny_config(eval_size=24), workdir, mode='eval')
  assert resized['eval_examples'] == 50
  assert resized['eval_miou'] > baseline + 0.1, (resized, baseline)
  with pytest.raises(SystemExit) as e:
    runner.run(config, str(tmp_path / 'empty'), mode='eval')
  assert e.value.code == 2
  assert 'nothing to evaluate' in capsys.readouterr().err

  # Predict writes masks and overlays at each image's own size.
  images, _ = shapes.make_segmentation(2, 32, 5, 2)
  inputs = tmp_path / 'inputs'
  (inputs / 'sub').mkdir(parents=True)
  Image.fromarray(images[0]).save(inputs / 'a.png')
  Image.fromarray(images[1]).resize((45, 27)).save(inputs / 'sub' / 'b.jpg')
  out = tmp_path / 'pred'
  written = predict.predict(config, inputs=str(inputs), output=str(out),
                            checkpoint=f'{workdir}/checkpoints/200')
  assert len(written) == 4
  mask_b = Image.open(out / 'sub' / 'b_mask.png')
  assert mask_b.mode == 'P' and mask_b.size == (45, 27)
  assert set(np.unique(np.asarray(mask_b))) <= {0, 1}
  assert Image.open(out / 'a_overlay.png').size == (32, 32)
  predict.predict(_tiny_config(eval_size=24), inputs=str(inputs / 'sub'),
                  output=str(tmp_path / 'pred24'), workdir=workdir)
  assert Image.open(tmp_path / 'pred24' / 'b_mask.png').size == (45, 27)

  # A non-empty output needs --overwrite; a missing checkpoint is an error.
  with pytest.raises(predict.PredictError, match='overwrite'):
    predict.predict(config, inputs=str(inputs), output=str(out), workdir=workdir)
  with pytest.raises(ckpt_lib.CheckpointError, match='random weights'):
    predict.predict(config, inputs=str(inputs), output=str(tmp_path / 'p2'),
                    workdir=str(tmp_path / 'empty'), overwrite=True)
  with pytest.raises(ckpt_lib.CheckpointError, match='step 7'):
    predict.predict(config, inputs=str(inputs), output=str(tmp_path / 'p3'),
                    checkpoint=f'{workdir}/checkpoints/7')


def test_bad_loss_config_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    runner.run(_tiny_config(losses='ce+lovasz'), str(tmp_path / 'r'))
  assert e.value.code == 2
  assert 'ce+lovasz' in capsys.readouterr().err
