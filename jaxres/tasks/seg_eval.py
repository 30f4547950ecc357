"""Segmentation evaluation: exact confusion matrix at label size, images.

The eval step scores every pixel of every real example once: the last batch
is padded and masked, and logits are resized back to each label's own size
when the inputs were resized (config.eval_size).
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxres import seg_inference
from jaxres import seg_losses
from jaxres import seg_metrics
from jaxres import visualize
from jaxres.sharding import DataParallel


def resize_to_labels(logits, label_hw, label_shape):
  """Bilinear (half-pixel) resize of each example's logits to its label size.

  logits [B, h, w, C] -> [B, *label_shape, C], where example i is scaled to
  label_hw[i] in the top-left corner (the rest is padding, labelled 255).
  """
  scale = label_hw.astype(jnp.float32) / jnp.asarray(logits.shape[1:3],
                                                      jnp.float32)

  def one(x, s):
    return jax.image.scale_and_translate(
        x, (*label_shape, x.shape[-1]), (0, 1), s, jnp.zeros((2,), jnp.float32),
        method='linear', antialias=False)

  return jax.vmap(one)(logits.astype(jnp.float32), scale)


def eval_step(state, batch, *, num_classes: int, ignore_label: int,
              resize_logits: bool,
              inference: seg_inference.InferenceMode = seg_inference.WHOLE):
  """Confusion matrix and loss sums of one padded batch, scored at label size.

  `inference`: whole image (the default), sliding windows, scales and flip.
  """
  def forward(images):
    return state.apply_fn(
        {'params': state.params, 'batch_stats': state.batch_stats},
        images, train=False)

  logits = seg_inference.logits(forward, batch['image'], inference)
  labels = batch['label']
  if resize_logits:
    logits = resize_to_labels(logits, batch['label_hw'], labels.shape[1:3])
  elif logits.shape[1:3] != labels.shape[1:3]:
    raise ValueError(f'Logits {logits.shape} do not match labels {labels.shape}.')
  example_mask = batch['mask'] > 0
  labels = jnp.where(example_mask[:, None, None], labels, ignore_label)
  predictions = jnp.argmax(logits, axis=-1)
  valid = (labels != ignore_label) & (labels < num_classes)
  num_valid = jnp.sum(valid)
  loss = seg_losses.cross_entropy(logits, labels, ignore_label=ignore_label)
  sums = {
      'confusion': seg_metrics.confusion_matrix(
          labels, predictions, num_classes, ignore_label=ignore_label),
      'loss': loss * num_valid,
      'pixels': num_valid,
      'count': jnp.sum(batch['mask']),
  }
  return sums, predictions.astype(jnp.uint8)


def _local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    key = s.index[0].start or 0
    if key not in seen:  # Skip replicas of the same rows.
      seen.add(key)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def evaluate(eval_fn, state, batches, dp: DataParallel, num_classes: int,
             *, num_images: int = 0, resized_inputs: bool = False):
  """Exact confusion matrix over the eval set; returns (scores, samples).

  `samples` are up to `num_images` (image uint8, prediction, label) triples
  from this process's part of the first batch, at each example's label size,
  for TensorBoard. `resized_inputs`: eval images were resized to a fixed size
  (else they sit at full resolution in the top-left of a padded slot).
  """
  accumulator = seg_metrics.ConfusionAccumulator(num_classes)
  totals = None
  samples = []
  for batch in batches:
    sums, predictions = eval_fn(state, dp.shard_batch(batch))
    accumulator.add(sums.pop('confusion'),
                    batch['label'].size * jax.process_count())
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if num_images and not samples:
      samples = _samples(batch, _local_rows(predictions), num_images,
                         resized_inputs)
  if totals is None:
    raise ValueError('The evaluation split is empty.')
  result = seg_metrics.scores(accumulator.result())
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  result['loss'] = totals['loss'] / max(totals['pixels'], 1.0)
  result['examples'] = totals['count']
  return result, samples


def _samples(batch, predictions, num_images: int, resized_inputs: bool):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxres.data import MEAN_RGB, STDDEV_RGB  # pylint: disable=g-import-not-at-top
  samples = []
  for i in range(len(predictions)):
    if len(samples) == num_images:
      break
    if batch['mask'][i] <= 0:
      continue
    h, w = (int(v) for v in batch['label_hw'][i])
    rgb = visualize.to_uint8_image(batch['image'][i], MEAN_RGB, STDDEV_RGB)
    if resized_inputs:
      rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    else:
      rgb = rgb[:h, :w]
    samples.append((rgb, predictions[i, :h, :w], batch['label'][i, :h, :w]))
  return samples


def eval_panel(image, prediction, label, ignore_label: int = 255) -> np.ndarray:
  """[input | predicted overlay | true overlay] as one uint8 image."""
  return visualize.side_by_side(
      image, visualize.overlay(image, prediction, ignore_label=ignore_label),
      visualize.overlay(image, label, ignore_label=ignore_label))


def scalars(result: dict, class_names) -> dict:
  """The TensorBoard scalars of an evaluation: means, and per class the IoU,
  Dice, precision and recall (classes with an undefined value are left out);
  eval_fg_iou / eval_fg_dice for two-class data."""
  out = {'eval_miou': result['miou'],
         'eval_mdice': result['mdice'],
         'eval_mfscore': result['mfscore'],
         'eval_mprecision': result['mprecision'],
         'eval_mrecall': result['mrecall'],
         'eval_pixel_accuracy': result['pixel_accuracy'],
         'eval_mean_class_accuracy': result['mean_class_accuracy'],
         'eval_loss': result['loss'],
         'eval_examples': result['examples']}
  for key in ('fg_iou', 'fg_dice'):
    if key in result:
      out[f'eval_{key}'] = result[key]
  for metric in ('iou', 'dice', 'precision', 'recall'):
    for name, value in zip(class_names, result[metric]):
      if not np.isnan(value):
        out[f'eval_{metric}/{name}'] = float(value)
  return out


def evaluate_and_log(eval_fn, state, ds, dp: DataParallel, step: int, writer,
                     *, num_images: int, resized_inputs: bool) -> dict:
  """Evaluates, writes scalars and overlays, logs the per-class table."""
  result, samples = evaluate(eval_fn, state, ds.eval_iter_fn(), dp,
                             ds.num_classes, num_images=num_images,
                             resized_inputs=resized_inputs)
  out = scalars(result, ds.class_names)
  writer.write_scalars(step, out)
  if samples:
    writer.write_images(step, {
        f'eval_image_{i}': eval_panel(*sample, ds.ignore_label)[None]
        for i, sample in enumerate(samples)})
  logging.info('eval @ step %d: mIoU %.4f  mDice %.4f  mFscore %.4f  pixel '
               'acc %.4f  mean class acc %.4f  loss %.4f  (%d examples)\n%s',
               step, result['miou'], result['mdice'], result['mfscore'],
               result['pixel_accuracy'], result['mean_class_accuracy'],
               result['loss'], result['examples'],
               seg_metrics.class_table(result, ds.class_names))
  return out
