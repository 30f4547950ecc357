"""Segmentation losses, confusion-matrix metrics and colour masks."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxres import seg_losses, seg_metrics, visualize


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture
def small_case():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 3, 4)).astype(np.int32)
  labels[0, 0, :2] = 255
  labels[1, 2, 3] = 255
  return logits, labels


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------

def test_cross_entropy_ignores_pixels(small_case):
  logits, labels = small_case
  valid = labels != 255
  p = _softmax(logits.astype(np.float64))
  nll = -np.log(np.take_along_axis(p, np.where(valid, labels, 0)[..., None],
                                   -1)[..., 0])
  expected = nll[valid].mean()
  got = seg_losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Whatever the logits of ignored pixels are, the loss does not change.
  changed = logits.copy()
  changed[~valid] = 1e3 * np.random.default_rng(1).normal(size=changed[~valid].shape)
  np.testing.assert_allclose(
      seg_losses.cross_entropy(jnp.asarray(changed), jnp.asarray(labels)), got,
      rtol=1e-6)
  # And their gradient is exactly zero.
  grad = jax.grad(lambda lo: seg_losses.cross_entropy(lo, jnp.asarray(labels)))(
      jnp.asarray(logits))
  assert np.all(np.asarray(grad)[~valid] == 0)
  assert np.any(np.asarray(grad)[valid] != 0)


def test_cross_entropy_all_ignored_is_zero():
  logits = jnp.ones((1, 2, 2, 3))
  labels = jnp.full((1, 2, 2), 255, jnp.int32)
  assert float(seg_losses.cross_entropy(logits, labels)) == 0.0
  assert float(seg_losses.focal(logits, labels)) == 0.0


def test_class_weights_weighted_mean(small_case):
  logits, labels = small_case
  weights = np.array([1.0, 3.0, 0.5])
  valid = labels != 255
  safe = np.where(valid, labels, 0)
  p = _softmax(logits.astype(np.float64))
  nll = -np.log(np.take_along_axis(p, safe[..., None], -1)[..., 0])
  w = weights[safe] * valid
  expected = (nll * w).sum() / w.sum()  # PyTorch CrossEntropyLoss(weight=...).
  got = seg_losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                 class_weights=weights)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Equal weights are the plain mean; up-weighting class 1 moves the loss
  # towards the class-1 pixels' mean loss.
  plain = seg_losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(
      seg_losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                               class_weights=[2.0, 2.0, 2.0]), plain, rtol=1e-6)
  heavy = seg_losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                   class_weights=[1.0, 1e4, 1.0])
  np.testing.assert_allclose(heavy, nll[labels == 1].mean(), rtol=1e-3)


def test_focal_by_hand():
  # One image, two valid pixels and one ignored, 2 classes.
  logits = np.array([[[[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]]], np.float32)
  labels = np.array([[[0, 0, 255]]], np.int32)
  p0 = 1 / (1 + math.exp(-2.0))  # softmax prob of the true class, pixel 0
  p1 = 1 / (1 + math.exp(1.0))   # pixel 1
  gamma, alpha = 2.0, 0.25
  expected = alpha * np.mean([-(1 - p) ** gamma * math.log(p) for p in (p0, p1)])
  got = seg_losses.focal(jnp.asarray(logits), jnp.asarray(labels), gamma=gamma,
                         alpha=alpha)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # gamma = 0 and no alpha is the cross-entropy.
  np.testing.assert_allclose(
      seg_losses.focal(jnp.asarray(logits), jnp.asarray(labels), gamma=0.0),
      seg_losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
      rtol=1e-6)


def test_dice_by_hand():
  logits = np.array([[[[0.0, 0.0], [math.log(3.0), 0.0], [9.0, -9.0]]]],
                    np.float32)
  labels = np.array([[[1, 0, 255]]], np.int32)
  # Softmax: pixel 0 -> (0.5, 0.5), pixel 1 -> (0.75, 0.25); pixel 2 ignored.
  p = np.array([[0.5, 0.5], [0.75, 0.25]])
  t = np.array([[0.0, 1.0], [1.0, 0.0]])
  smooth = 1.0
  score = (2 * (p * t).sum(0) + smooth) / (p.sum(0) + t.sum(0) + smooth)
  expected = 1 - score.mean()
  got = seg_losses.dice(jnp.asarray(logits), jnp.asarray(labels), smooth=smooth)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # A perfect, confident prediction has a dice loss near 0.
  perfect = np.array([[[[-20.0, 20.0], [20.0, -20.0]]]], np.float32)
  assert float(seg_losses.dice(jnp.asarray(perfect),
                               jnp.asarray([[[1, 0]]]))) < 1e-6


def test_make_loss_fn_combines_losses(small_case):
  logits, labels = small_case
  c = ml_collections.ConfigDict({
      'losses': 'ce+dice', 'class_weights': None, 'focal_gamma': 2.0,
      'focal_alpha': None, 'dice_smooth': 1.0,
      'loss_weights': {'ce': 1.0, 'dice': 0.5, 'focal': 1.0}})
  total, parts = seg_losses.make_loss_fn(c)(jnp.asarray(logits),
                                            jnp.asarray(labels))
  assert set(parts) == {'ce', 'dice'}
  np.testing.assert_allclose(total, parts['ce'] + 0.5 * parts['dice'], rtol=1e-6)
  with pytest.raises(ValueError, match='one or more of'):
    seg_losses.parse_losses('ce+lovasz')


# ---------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------

def test_scores_on_hand_made_confusion():
  # rows = true class, cols = predicted.
  cm = np.array([[50, 10, 0, 0],
                 [5, 30, 5, 0],
                 [0, 0, 0, 0],   # class 2 never labelled ...
                 [0, 0, 0, 0]])  # class 3 never labelled nor predicted
  r = seg_metrics.scores(cm)
  iou0 = 50 / (60 + 55 - 50)
  iou1 = 30 / (40 + 40 - 30)
  iou2 = 0 / (0 + 5 - 0)  # predicted 5 times, never right: IoU 0, counted.
  np.testing.assert_allclose(r['iou'][:3], [iou0, iou1, iou2])
  assert np.isnan(r['iou'][3])  # absent from labels and predictions: excluded
  np.testing.assert_allclose(r['miou'], (iou0 + iou1 + iou2) / 3)
  np.testing.assert_allclose(r['pixel_accuracy'], 80 / 100)
  np.testing.assert_allclose(r['class_accuracy'][:2], [50 / 60, 30 / 40])
  assert np.isnan(r['class_accuracy'][2]) and np.isnan(r['class_accuracy'][3])
  np.testing.assert_allclose(r['mean_class_accuracy'], (50 / 60 + 30 / 40) / 2)
  table = seg_metrics.class_table(r, ['bg', 'cat', 'dog', 'cow'])
  assert 'cat' in table and 'cow' in table and 'pixel accuracy' in table
  perfect = seg_metrics.scores(np.diag([3, 4, 5]))
  assert perfect['miou'] == 1.0 and perfect['pixel_accuracy'] == 1.0


def test_confusion_matrix_matches_numpy_bincount():
  rng = np.random.default_rng(0)
  num_classes = 5
  labels = rng.integers(0, num_classes, size=(6, 17, 13))
  labels[rng.random(labels.shape) < 0.2] = 255
  preds = rng.integers(0, num_classes, size=labels.shape)
  example_mask = np.array([1, 1, 0, 1, 1, 0], np.float32)
  keep = (labels != 255) & (example_mask[:, None, None] > 0)
  expected = np.bincount(
      (labels[keep] * num_classes + preds[keep]).astype(np.int64),
      minlength=num_classes**2).reshape(num_classes, num_classes)
  fn = jax.jit(lambda l, p, m: seg_metrics.confusion_matrix(
      l, p, num_classes, example_mask=m))
  got = np.asarray(fn(labels.astype(np.int32), preds.astype(np.int32),
                      example_mask))
  np.testing.assert_array_equal(got, expected)

  # Accumulated over batches (with an early move to the host) it is exact too.
  acc = seg_metrics.ConfusionAccumulator(num_classes)
  acc._bound = 2**31 - 100  # pylint: disable=protected-access  (force a flush)
  acc._device_sum = jnp.zeros((num_classes, num_classes), jnp.int32)  # pylint: disable=protected-access
  for i in range(6):
    acc.add(fn(labels[i:i + 1].astype(np.int32), preds[i:i + 1].astype(np.int32),
               example_mask[i:i + 1]), labels[i].size)
  np.testing.assert_array_equal(acc.result(), expected)


# ---------------------------------------------------------------------------
# Colours.
# ---------------------------------------------------------------------------

def test_voc_palette_and_overlay():
  palette = visualize.voc_palette()
  np.testing.assert_array_equal(palette[:4], [[0, 0, 0], [128, 0, 0],
                                              [0, 128, 0], [128, 128, 0]])
  np.testing.assert_array_equal(palette[15], [192, 128, 128])  # person
  np.testing.assert_array_equal(palette[255], [224, 224, 192])  # ignore
  image = np.full((2, 2, 3), 100, np.uint8)
  mask = np.array([[0, 1], [255, 1]])
  out = visualize.overlay(image, mask, alpha=0.5)
  assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
  np.testing.assert_array_equal(out[1, 0], [100, 100, 100])  # ignore: unchanged
  np.testing.assert_array_equal(out[0, 1], [114, 50, 50])
  np.testing.assert_array_equal(visualize.colorize(mask)[0, 1], [128, 0, 0])
