"""Input pipeline over in-memory numpy arrays (embedded shapes, small folders).

Training order is a pure function of (seed, step): step ``s`` is batch
``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, and epoch ``e`` reads
the examples in the order ``permutation(rng(seed, e))``, dropping the remainder.
The global batch is cut into ``process_count`` contiguous slices, one per
process, so the global batch does not depend on the number of processes.
Augmentation draws from a numpy Generator seeded by (seed, step, position in
the global batch), so it too is the same for any process count and on resume.

Batches are dicts of numpy arrays: ``image`` float32 [b, H, W, C] normalised
with ImageNet mean/std, ``label`` int32 [b] (or [b, H, W] for segmentation);
eval batches add ``mask`` float32 [b] (1 real example, 0 padding).
"""
from typing import Callable, Iterator, Optional

import numpy as np

from jaxres import data as data_lib

# augment_fn(image [H, W, C] uint8, label, rng) -> (image, label).
AugmentFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]

_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder of each epoch is dropped)."""
  return num_examples // global_batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of ``epoch``: a pure function of (seed, epoch)."""
  rng = np.random.default_rng([seed, _PERMUTATION_STREAM, epoch])
  return rng.permutation(num_examples)


def _make_batch(images, labels, normalize):
  image = data_lib.normalize(images) if normalize else images
  return dict(image=image, label=labels.astype(np.int32))


def train_iterator(images: np.ndarray,
                   labels: np.ndarray,
                   batch_size: int,
                   seed: int,
                   start_step: int = 0,
                   process_index: int = 0,
                   process_count: int = 1,
                   augment_fn: Optional[AugmentFn] = None,
                   normalize: bool = True) -> Iterator[dict]:
  """Yields this process's training batches forever, from ``start_step`` on.

  Args:
    images: uint8 [N, H, W, C], the whole dataset (same on every process).
    labels: int [N] or [N, H, W].
    batch_size: PER-PROCESS batch size; the global batch is
      ``batch_size * process_count``.
    seed: order and augmentation seed (non-negative).
    start_step: first step to yield; equals skipping that many batches.
    process_index, process_count: this process's slice of the global batch.
    augment_fn: optional per-example ``(image, label, rng) -> (image, label)``.
    normalize: map images to float32 with ImageNet mean/std.
  """
  if len(images) != len(labels):
    raise ValueError(f'{len(images)} images but {len(labels)} labels.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in '
                     f'[0, {process_count}).')
  global_batch = batch_size * process_count
  per_epoch = steps_per_epoch(len(images), global_batch)
  if per_epoch < 1:
    raise ValueError(f'Dataset of {len(images)} examples is smaller than the '
                     f'global batch size {global_batch}.')
  # Checks above run at the call; batches are made lazily below.
  return _train_batches(images, labels, batch_size, seed, start_step,
                        process_index * batch_size, global_batch, per_epoch,
                        augment_fn, normalize)


def _train_batches(images, labels, batch_size, seed, step, lo, global_batch,
                   per_epoch, augment_fn, normalize):
  order, order_epoch = None, None
  while True:
    epoch, k = divmod(step, per_epoch)
    if epoch != order_epoch:
      order, order_epoch = epoch_permutation(len(images), seed, epoch), epoch
    start = k * global_batch + lo
    idx = order[start:start + batch_size]
    batch_images, batch_labels = images[idx], labels[idx]
    if augment_fn is not None:
      out_images, out_labels = [], []
      for i in range(batch_size):
        rng = np.random.default_rng([seed, _AUGMENT_STREAM, step, lo + i])
        image, label = augment_fn(batch_images[i], batch_labels[i], rng)
        out_images.append(image)
        out_labels.append(label)
      batch_images, batch_labels = np.stack(out_images), np.stack(out_labels)
    yield _make_batch(batch_images, batch_labels, normalize)
    step += 1


def eval_iterator(images: np.ndarray,
                  labels: np.ndarray,
                  batch_size: int,
                  process_index: int = 0,
                  process_count: int = 1,
                  normalize: bool = True) -> Iterator[dict]:
  """Yields padded eval batches covering every example exactly once.

  Global batch ``j`` holds examples ``[j * B, (j + 1) * B)`` with ``B =
  batch_size * process_count``; process ``p`` takes its contiguous slice. Every
  process yields the same number of batches; slots past the end of the data are
  zeros (segmentation labels 255) with ``mask`` 0.
  """
  n = len(images)
  global_batch = batch_size * process_count
  num_batches = -(-n // global_batch)
  label_pad = 0 if labels.ndim == 1 else data_lib.IGNORE_LABEL
  for j in range(num_batches):
    start = j * global_batch + process_index * batch_size
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch_images = np.where(valid[:, None, None, None], images[idx], 0)
    batch_labels = labels[idx].astype(np.int32)
    batch_labels[~valid] = label_pad
    batch = _make_batch(batch_images.astype(images.dtype), batch_labels,
                        normalize)
    batch['mask'] = valid.astype(np.float32)
    yield batch


def random_crop_flip(padding: int = 4, flip: bool = True) -> AugmentFn:
  """CIFAR-style augmentation: zero-pad, random crop back, random h-flip.

  Labels with spatial dims (segmentation masks) get the same crop and flip,
  padded with the ignore label.
  """

  def augment(image, label, rng):
    height, width = image.shape[:2]
    dy, dx = rng.integers(0, 2 * padding + 1, size=2)
    do_flip = flip and rng.random() < 0.5

    def crop(x, fill):
      pad = [(padding, padding), (padding, padding)] + [(0, 0)] * (x.ndim - 2)
      x = np.pad(x, pad, constant_values=fill)[dy:dy + height, dx:dx + width]
      return x[:, ::-1] if do_flip else x

    image = crop(image, 0)
    if np.ndim(label) >= 2:
      label = crop(label, data_lib.IGNORE_LABEL)
    return image, label

  return augment
