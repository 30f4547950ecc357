"""Segmentation metrics from an exact confusion matrix.

`confusion_matrix` runs inside the jitted eval step and returns an int32 [C, C]
count matrix (rows: true class, columns: predicted class) for one batch;
`ConfusionAccumulator` adds them up on device over the whole eval set and
`scores` turns the total into mIoU and friends on the host.

Classes that appear in neither the labels nor the predictions have an IoU of
0 / 0: it is reported as NaN and left out of the mean (mIoU is the mean over
classes that occur), which is what the VOC and Cityscapes evaluation scripts
do. Likewise a class absent from the labels has a NaN class accuracy and is
left out of the mean class accuracy.

Dice and the F-score follow mmseg's IoUMetric ('mDice', 'mFscore'): Dice =
2 TP / (label + predicted pixels), NaN where both are 0; precision = TP /
predicted pixels, recall = TP / label pixels, F-score = (1 + b^2) P R /
(b^2 P + R) with b = 1, NaN where precision or recall is (so a class that is
labelled but never predicted counts 0 in mDice but is left out of mFscore and
mprecision; elsewhere the F1 score equals the Dice). Two-class data
(background + one class) also gets the foreground's Dice and IoU by name.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_LABEL = 255
_INT32_MAX = 2**31 - 1


def confusion_matrix(labels, predictions, num_classes: int, *,
                     example_mask=None, ignore_label: int = IGNORE_LABEL):
  """Counts (true, predicted) pairs over the valid pixels of a batch.

  Args:
    labels: int [B, H, W]; `ignore_label` and any value outside [0, C) is
      skipped.
    predictions: int [B, H, W] class indices.
    num_classes: C.
    example_mask: optional [B] (1 = real example, 0 = padding of the last
      batch); padded examples are skipped entirely.
    ignore_label: the label value that marks pixels not to score.

  Returns:
    int32 [C, C]; entry [i, j] counts pixels of true class i predicted as j.
  """
  labels = labels.astype(jnp.int32)
  predictions = predictions.astype(jnp.int32)
  valid = ((labels != ignore_label) & (labels >= 0) & (labels < num_classes)
           & (predictions >= 0) & (predictions < num_classes))
  if example_mask is not None:
    valid &= (example_mask > 0).reshape((-1,) + (1,) * (labels.ndim - 1))
  index = jnp.where(valid, labels * num_classes + predictions, 0)
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32)
  counts = counts.at[index.reshape(-1)].add(valid.reshape(-1).astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


class ConfusionAccumulator:
  """Sums per-batch confusion matrices on device, exactly.

  The running sum stays on device in int32; before it could overflow (a batch
  adds at most B*H*W to one entry) it is moved into an int64 total on the
  host, so arbitrarily large eval sets are counted exactly.
  """

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self._device_sum = None
    self._bound = 0
    self._host = np.zeros((num_classes, num_classes), np.int64)

  def add(self, batch_confusion, num_pixels: int):
    if self._device_sum is not None and self._bound + num_pixels > _INT32_MAX:
      self._flush()
    if self._device_sum is None:
      self._device_sum = batch_confusion
    else:
      self._device_sum = self._device_sum + batch_confusion
    self._bound += num_pixels

  def _flush(self):
    if self._device_sum is not None:
      self._host += np.asarray(jax.device_get(self._device_sum), np.int64)
    self._device_sum, self._bound = None, 0

  def result(self) -> np.ndarray:
    self._flush()
    return self._host.copy()


def _divide(num, den):
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  out = np.full(np.broadcast(num, den).shape, np.nan)
  np.divide(num, den, out=out, where=den > 0)
  return out


def _nanmean(x):
  x = np.asarray(x, np.float64)
  return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else float('nan')


def fscore(precision, recall, beta: float = 1.0):
  """F-beta of precision and recall (arrays): NaN where either is NaN, 0 where
  both are 0 (mmseg's 0 / 0 gives NaN there, leaving out a class that is
  labelled and predicted but never right)."""
  precision = np.asarray(precision, np.float64)
  recall = np.asarray(recall, np.float64)
  b2 = beta * beta
  out = _divide((1 + b2) * precision * recall, b2 * precision + recall)
  out[(precision == 0) & (recall == 0)] = 0.0
  return out


def scores(confusion) -> dict:
  """mIoU, Dice, F-score and accuracies of a [C, C] confusion matrix.

  Returns a dict of floats ('miou', 'mdice', 'mfscore', 'mprecision',
  'mrecall', 'pixel_accuracy', 'mean_class_accuracy',
  'frequency_weighted_iou', 'num_pixels'; for two classes also 'fg_iou' and
  'fg_dice', class 1's) and arrays per class ('iou', 'dice', 'precision',
  'recall', 'fscore', 'class_accuracy', 'label_pixels', 'predicted_pixels').
  NaN marks undefined per-class values (see the module docstring).
  """
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  label_pixels = cm.sum(axis=1)
  predicted_pixels = cm.sum(axis=0)
  total = cm.sum()
  iou = _divide(tp, label_pixels + predicted_pixels - tp)
  class_accuracy = _divide(tp, label_pixels)
  freq = _divide(label_pixels, total) if total else np.zeros_like(tp)
  present = label_pixels > 0
  dice = _divide(2 * tp, label_pixels + predicted_pixels)
  precision = _divide(tp, predicted_pixels)
  f1 = fscore(precision, class_accuracy)
  extra = {}
  if len(tp) == 2:
    extra = {'fg_iou': float(iou[1]), 'fg_dice': float(dice[1])}
  return {
      'miou': _nanmean(iou),
      'iou': iou,
      'mdice': _nanmean(dice),
      'dice': dice,
      'mfscore': _nanmean(f1),
      'fscore': f1,
      'mprecision': _nanmean(precision),
      'precision': precision,
      'mrecall': _nanmean(class_accuracy),
      'recall': class_accuracy,
      **extra,
      'pixel_accuracy': float(tp.sum() / total) if total else float('nan'),
      'class_accuracy': class_accuracy,
      'mean_class_accuracy': _nanmean(class_accuracy),
      'frequency_weighted_iou': float(np.sum(freq[present] * iou[present])),
      'num_pixels': float(total),
      'label_pixels': label_pixels,
      'predicted_pixels': predicted_pixels,
  }


def class_table(result: dict, class_names: Optional[Sequence[str]] = None) -> str:
  """A per-class text table for the log: IoU, Dice (= F1), precision, recall
  (= class accuracy) and pixel shares, then the means."""
  iou = result['iou']
  names = list(class_names) if class_names else []
  names += [f'class_{i}' for i in range(len(names), len(iou))]
  width = max(12, max(len(n) for n in names))
  total = max(result['num_pixels'], 1.0)
  rule = '-' * (width + 48)

  def pct(x):
    return '     -' if np.isnan(x) else f'{100 * x:6.2f}'

  lines = [f'{"class":<{width}}    IoU   Dice   prec recall  label%   pred%',
           rule]
  for i, name in enumerate(names):
    lines.append(
        f'{name:<{width}} {pct(iou[i])} {pct(result["dice"][i])} '
        f'{pct(result["precision"][i])} {pct(result["recall"][i])} '
        f'{100 * result["label_pixels"][i] / total:7.2f} '
        f'{100 * result["predicted_pixels"][i] / total:7.2f}')
  lines.append(rule)
  lines.append(f'{"mean":<{width}} {pct(result["miou"])} '
               f'{pct(result["mdice"])} {pct(result["mprecision"])} '
               f'{pct(result["mrecall"])}   pixel accuracy '
               f'{pct(result["pixel_accuracy"]).strip()}%  mFscore '
               f'{pct(result["mfscore"]).strip()}%')
  if 'fg_dice' in result:
    lines.append(f'foreground ({names[1]}): IoU {pct(result["fg_iou"]).strip()}'
                 f'%  Dice {pct(result["fg_dice"]).strip()}%')
  return '\n'.join(lines)
