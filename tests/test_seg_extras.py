"""Segmentation training extras: OHEM, class weights, auxiliary head, metrics."""
import concurrent.futures
import functools
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import seg_quickstart
from jaxres import checkpoint as ckpt_lib
from jaxres import convert, export_loader, inference, models, runner
from jaxres import seg_losses, seg_metrics, train_state
from jaxres.data import batching, seg_labels
from jaxres.models import aux_head
from jaxres.tasks import seg_eval, segmentation


# ---------------------------------------------------------------------------
# OHEM against a numpy transcription of mmseg's OHEMPixelSampler.
# ---------------------------------------------------------------------------

def _ohem_reference(logits, labels, thresh, min_kept, ignore=255):
  logits = logits.astype(np.float64)
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  valid = labels != ignore
  p = np.take_along_axis(prob, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  sort_prob = np.sort(p[valid])
  batch_kept = min_kept * labels.shape[0]
  min_threshold = (sort_prob[min(batch_kept, sort_prob.size - 1)]
                   if sort_prob.size else 0.0)
  return valid & (p < max(min_threshold, thresh)), p


def _batch(seed, shape=(2, 6, 7), classes=4, ignore_fraction=0.2):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=shape + (classes,)).astype(np.float32) * 2
  labels = rng.integers(0, classes, shape).astype(np.int32)
  labels[rng.random(shape) < ignore_fraction] = 255
  return logits, labels


@pytest.mark.parametrize('thresh,min_kept,path', [
    (0.7, 1, 'threshold'),      # Many pixels below 0.7: the threshold decides.
    (0.02, 10, 'min_kept'),     # Few below 0.02: the 20 hardest are kept.
    (0.02, 1000, 'all_but_one'),  # min_kept beyond the valid pixels.
])
def test_ohem_mask_matches_mmseg_reference(thresh, min_kept, path):
  logits, labels = _batch(0)
  want, prob = _ohem_reference(logits, labels, thresh, min_kept)
  got = np.asarray(jax.jit(functools.partial(
      seg_losses.ohem_mask, thresh=thresh, min_kept=min_kept))(logits, labels))
  np.testing.assert_array_equal(got, want)
  valid = labels != 255
  assert not got[~valid].any()  # Ignore pixels are never counted.
  below = np.sum(valid & (prob < thresh))
  if path == 'threshold':
    assert got.sum() == below > 2
  elif path == 'min_kept':
    assert below < 20 and got.sum() == 20
  else:
    assert got.sum() == valid.sum() - 1
  # The loss is the mean cross-entropy over the kept pixels.
  config = _loss_config(ohem_thresh=thresh, ohem_min_kept=min_kept)
  loss, parts = seg_losses.make_loss_fn(config)(logits, labels)
  nll = -np.log(np.take_along_axis(
      jax.nn.softmax(logits.astype(np.float64)),
      np.where(valid, labels, 0)[..., None], -1)[..., 0])
  np.testing.assert_allclose(loss, nll[want].mean(), rtol=1e-5)
  assert float(parts['ohem_kept']) == pytest.approx(want.sum() / valid.sum())


def test_ohem_on_a_sharded_global_batch_and_without_valid_pixels():
  logits, labels = _batch(1, shape=(8, 5, 6))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('data',))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  fn = jax.jit(functools.partial(seg_losses.ohem_mask, thresh=1e-4,
                                 min_kept=3), in_shardings=(sharded, sharded))
  want, _ = _ohem_reference(logits, labels, 1e-4, 3)
  # One threshold over the global batch (not one per device).
  np.testing.assert_array_equal(np.asarray(fn(logits, labels)), want)
  assert want.sum() == 24
  none = np.full_like(labels, 255)
  assert not np.asarray(seg_losses.ohem_mask(
      logits, none, thresh=0.7, min_kept=3)).any()
  loss, _ = seg_losses.make_loss_fn(_loss_config(ohem_thresh=0.7))(logits, none)
  assert float(loss) == 0.0


def _loss_config(**overrides):
  c = ml_collections.ConfigDict({
      'losses': 'ce', 'loss_weights': {'ce': 1.0}, 'class_weights': None,
      'focal_gamma': 2.0, 'focal_alpha': None, 'dice_smooth': 1.0,
      'ohem_thresh': None, 'ohem_min_kept': 1, 'aux_loss_weight': 0.0})
  c.update(overrides)
  return c


def test_loss_without_extras_is_the_plain_loss_bit_for_bit():
  logits, labels = _batch(2)
  total, parts = jax.jit(seg_losses.make_loss_fn(_loss_config()))(
      logits, labels)
  plain = jax.jit(seg_losses.cross_entropy)(logits, labels)
  assert np.asarray(total).tobytes() == np.asarray(plain).tobytes()
  assert set(parts) == {'ce'}
  # An auxiliary loss of weight 0 adds nothing.
  total, parts = seg_losses.make_loss_fn(_loss_config())(logits, labels, logits)
  assert set(parts) == {'ce'}


# ---------------------------------------------------------------------------
# Class weights: closed forms, and the counts of the label scan.
# ---------------------------------------------------------------------------

def test_class_weights_closed_forms():
  counts, image = [600, 300, 100], [1000, 1000, 400]
  assert seg_losses.class_weights_from_counts('none', counts, image) is None
  # freq = [0.6, 0.3, 0.25], median 0.3.
  np.testing.assert_allclose(seg_losses.class_weights_from_counts(
      'median_freq', counts, image), [0.5, 1.0, 1.2])
  np.testing.assert_allclose(seg_losses.class_weights_from_counts(
      'inverse_log', counts, image),
      [1 / np.log(1.62), 1 / np.log(1.32), 1 / np.log(1.12)])
  # An absent class gets the largest weight.
  np.testing.assert_allclose(seg_losses.class_weights_from_counts(
      'median_freq', [600, 0, 100], image), [0.425 / 0.6, 1.7, 1.7])
  np.testing.assert_allclose(seg_losses.class_weights_from_counts(
      'inverse_log', [600, 0, 100], image)[1], 1 / np.log(1.02))
  with pytest.raises(ValueError, match='median_freq, inverse_log'):
    seg_losses.class_weights_from_counts('enet', counts, image)


class _Masks:
  def __init__(self, masks):
    self.masks = masks

  def __len__(self):
    return len(self.masks)

  def name(self, i):
    return f'mask{i}.png'

  def load_label(self, i):
    return self.masks[i]

  def image_size(self, i):
    return self.masks[i].shape


def test_label_scan_counts_pixels_per_class():
  masks = [np.array([[0, 0, 1], [255, 1, 1]], np.uint8),
           np.array([[0, 2, 2, 255]], np.uint8)]
  reader = batching.Reader(_Masks(masks), 'train', 'stop',
                           batching.BadImageLog())
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    stats = seg_labels.scan_labels(reader, 3, max_files=10, seed=0, pool=pool)
  np.testing.assert_array_equal(stats.class_pixels, [3, 3, 2])
  np.testing.assert_array_equal(stats.image_pixels, [5 + 3, 5, 3])
  assert (stats.num_masks, stats.num_files) == (2, 2)


def test_bad_extras_are_clear_config_errors():
  bad = _tiny_config(ohem_thresh=1.5, ohem_min_kept=0,
                     class_weighting='median', aux_loss_weight=-1.0)
  with pytest.raises(segmentation.ConfigError) as e:
    segmentation.check_config(bad)
  for text in ('ohem_thresh=1.5', 'ohem_min_kept=0', "'median'",
               'aux_loss_weight=-1.0'):
    assert text in str(e.value)
  both = _tiny_config(class_weighting='inverse_log', class_weights=(1.0, 2.0))
  with pytest.raises(segmentation.ConfigError, match='set only one'):
    segmentation.check_config(both)


# ---------------------------------------------------------------------------
# Metrics against numpy.
# ---------------------------------------------------------------------------

def test_dice_and_fscore_match_numpy():
  rng = np.random.default_rng(0)
  cm = rng.integers(0, 50, (5, 5)).astype(np.int64)
  cm[3, :] = 0  # Class 3 never labelled ...
  cm[:, 4] = 0  # ... class 4 never predicted.
  r = seg_metrics.scores(cm)
  tp, labelled, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
  dice = 2 * tp / (labelled + predicted)
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = tp / predicted
    recall = tp / labelled
    f1 = 2 * precision * recall / (precision + recall)
  np.testing.assert_allclose(r['dice'], dice)
  np.testing.assert_allclose(r['precision'], precision)
  np.testing.assert_allclose(r['recall'], recall)
  np.testing.assert_allclose(r['fscore'], f1)
  assert r['mdice'] == pytest.approx(np.mean(dice))
  assert r['mfscore'] == pytest.approx(np.nanmean(f1))
  assert r['mprecision'] == pytest.approx(np.nanmean(precision))
  assert r['mrecall'] == pytest.approx(np.nanmean(recall))
  assert np.isnan(f1[3]) and np.isnan(f1[4]) and dice[4] == 0
  assert 'fg_dice' not in r
  out = seg_eval.scalars({**r, 'loss': 0.0, 'examples': 1}, list('abcde'))
  assert out['eval_mdice'] == r['mdice'] and 'eval_precision/e' not in out
  table = seg_metrics.class_table(r, list('abcde'))
  assert 'Dice' in table and 'mFscore' in table
  # Two classes: the foreground's Dice and IoU by name.
  two = seg_metrics.scores(np.array([[50, 10], [5, 35]]))
  assert two['fg_dice'] == pytest.approx(70 / 85)
  assert two['fg_iou'] == pytest.approx(35 / 50)
  out = seg_eval.scalars({**two, 'loss': 0.0, 'examples': 1}, ['bg', 'fg'])
  assert out['eval_fg_dice'] == two['fg_dice']


# ---------------------------------------------------------------------------
# The auxiliary head: in the training state and step, nowhere else.
# ---------------------------------------------------------------------------

class _Backbone(nn.Module):
  """Feature maps named like ResNet's."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), strides=4)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return {'stride4': x, 'stride16': nn.Conv(6, (3, 3), strides=4)(x)}


class _ToySegmenter(nn.Module):
  num_classes: int = 3
  backbone: str = 'resnet_toy'
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    features = _Backbone(name='backbone')(x, train=train)
    y = nn.Conv(self.num_classes, (1, 1), name='head')(features['stride4'])
    return jax.image.resize(y, (*x.shape[:3], self.num_classes), 'bilinear')


def test_aux_head_trains_but_is_not_part_of_the_model():
  config = _tiny_config(aux_loss_weight=0.4, losses='ce')
  model = _ToySegmenter()
  task = segmentation.Segmentation(config)
  assert segmentation.Segmentation(_tiny_config()).training_model(
      model) is model  # aux_loss_weight 0: the model itself.
  trained = task.training_model(model)
  state = segmentation.build_state(config, trained, (16, 16, 3), 0,
                                   lambda _: 0.1, jax.random.key(0))
  assert aux_head.AUX_HEAD in state.params
  assert aux_head.AUX_HEAD in state.batch_stats
  bare = ckpt_lib.model_variables(
      {'params': state.params, 'batch_stats': state.batch_stats})
  # The model's variables are those of the bare model, at the same init.
  fresh = train_state.init_variables(model, jax.random.key(0), (16, 16, 3))
  assert jax.tree.structure(bare['params']) == jax.tree.structure(fresh[0])
  np.testing.assert_array_equal(bare['params']['head']['kernel'],
                                fresh[0]['head']['kernel'])

  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(2, 16, 16, 3)).astype(np.float32),
           'label': rng.integers(0, 3, (2, 16, 16)).astype(np.int32)}
  step = jax.jit(functools.partial(
      segmentation.train_step, loss_fn=seg_losses.make_loss_fn(config),
      lr_fn=lambda _: 0.1, num_classes=3, ignore_label=255,
      frozen_backbone=False, backbone_bn_train=True))
  new, metrics = step(state, batch, jax.random.key(1))
  assert 'loss_aux' in metrics and float(metrics['loss_aux']) > 0
  np.testing.assert_allclose(
      metrics['loss'], metrics['loss_ce'] + 0.4 * metrics['loss_aux'],
      rtol=1e-6)
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(a != b)), state.params[aux_head.AUX_HEAD],
      new.params[aux_head.AUX_HEAD]))
  assert all(moved)

  # Evaluation runs the model alone: same logits as the bare model.
  dp = types.SimpleNamespace(replicated=None, batch=None)
  eval_fn, _ = task.eval_step(_FakeData(), dp)
  batch['mask'] = np.ones(2, np.float32)
  seen = {}

  def spy(variables, *args, **kwargs):
    seen.update(variables)
    return new.apply_fn(variables, *args, **kwargs)

  sums, _ = jax.jit(eval_fn)(new.replace(apply_fn=spy), batch)
  assert aux_head.AUX_HEAD not in seen['params']
  assert aux_head.AUX_HEAD not in seen['batch_stats']
  bare = ckpt_lib.model_variables(
      {'params': new.params, 'batch_stats': new.batch_stats})
  np.testing.assert_array_equal(
      trained.apply(bare, batch['image'], train=False),
      model.apply(bare, batch['image'], train=False))
  assert int(sums['count']) == 2

  # A backbone without a stride-16 map cannot take the head.
  class Shallow(_ToySegmenter):
    @nn.compact
    def __call__(self, x, train: bool):
      return nn.Conv(3, (1, 1), name='backbone')(x)
  with pytest.raises(ValueError, match="'stride16'.*aux_loss_weight=0"):
    jax.eval_shape(lambda: task.training_model(Shallow()).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))


class _FakeData:
  num_classes = 3
  ignore_label = 255


# ---------------------------------------------------------------------------
# End to end: OHEM + class weights + auxiliary head; then predict, export and
# init_from read the model without the head.
# ---------------------------------------------------------------------------

def _tiny_config(**overrides):
  c = seg_quickstart.get_config()
  c.unlock()
  c.model = 'unet_vgg16'
  c.model_kwargs = ml_collections.ConfigDict(
      {'backbone_width': 4, 'decoder_filters': (4, 4, 4, 4),
       'align_corners': True})
  c.num_classes = 2
  c.image_size = 32
  c.crop_size = 32
  c.shapes_train_size = 16
  c.shapes_eval_size = 8
  c.batch_size = 8
  c.eval_batch_size = 8
  c.losses = 'ce'
  c.learning_rate = 1e-3
  c.schedule = 'constant'
  c.num_train_epochs = None
  c.num_train_steps = 2
  c.warmup_epochs = None
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.label_check_files = 16
  c.num_eval_images = 0
  c.compilation_cache_dir = ''
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


def test_tiny_run_with_ohem_class_weights_and_aux_head(tmp_path, caplog,
                                                      capsys):
  workdir = str(tmp_path / 'run')
  config = _tiny_config(ohem_thresh=0.7, ohem_min_kept=50,
                        class_weighting='median_freq', aux_loss_weight=0.4)
  with caplog.at_level('INFO'):
    metrics = runner.run(config, workdir)
  assert 0 <= metrics['eval_mdice'] <= 1 and 'eval_fg_dice' in metrics
  assert 'mDice' in caplog.text and 'Class weights (median_freq)' in caplog.text
  info = json.load(open(os.path.join(workdir, 'dataset.json')))
  weights = info['class_weights']
  assert weights['method'] == 'median_freq' and len(weights['weights']) == 2
  assert weights['weights'][1] > weights['weights'][0]  # Foreground is rarer.
  params_table = open(os.path.join(workdir, 'parameters.txt')).read()
  assert 'aux_head/conv/kernel' in params_table

  # Predict and export read the model alone; so does init_from.
  loaded = inference.load_for_inference(config, workdir=workdir)
  assert aux_head.AUX_HEAD not in loaded.variables['params']
  exported = export_loader.load_trained(workdir)
  assert aux_head.AUX_HEAD not in exported.variables['params']
  assert aux_head.AUX_HEAD not in exported.variables['batch_stats']
  for a, b in zip(jax.tree.leaves(loaded.variables),
                  jax.tree.leaves(exported.variables)):
    np.testing.assert_array_equal(a, b)
  model = models.build_model(config.model, num_classes=2,
                             **config.model_kwargs)
  target = jax.jit(lambda: aux_head.with_aux_head(model, 2).init(
      {'params': jax.random.key(3), 'dropout': jax.random.key(3)},
      jnp.zeros((1, 32, 32, 3)), train=False))()
  merged = convert.load_pretrained(workdir, target, config.model,
                                   log=lambda _: None)
  np.testing.assert_array_equal(merged['params']['final']['kernel'],
                                loaded.variables['params']['final']['kernel'])
  np.testing.assert_array_equal(  # The head keeps its fresh values.
      merged['params'][aux_head.AUX_HEAD]['cls']['kernel'],
      target['params'][aux_head.AUX_HEAD]['cls']['kernel'])
  # Resuming without the head names the mismatch.
  with pytest.raises(SystemExit):
    runner.run(_tiny_config(ohem_thresh=0.7, ohem_min_kept=50,
                            class_weighting='median_freq', num_train_steps=4),
               workdir)
  assert 'aux_loss_weight' in capsys.readouterr().err
