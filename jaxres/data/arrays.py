"""Datasets held in memory as numpy arrays (the embedded shapes datasets).

The whole dataset is one uint8 array [N, H, W, C] with labels [N] (or
[N, H, W] for segmentation), the same on every process. Order, augmentation
rngs, the split of the GLOBAL ``batch_size`` over processes and the eval
padding are batching.py's: step ``s`` is batch ``s % steps_per_epoch`` of
epoch ``s // steps_per_epoch``, epoch ``e`` reads the examples in the order
``batching.epoch_permutation(n, seed, e)`` (the remainder dropped), and
example j of the global batch at step s is augmented with
``batching.example_rng(seed, s, j)``; so batches are the same for any
process count and on resume.

Batches are dicts of numpy arrays: ``image`` float32 [b, H, W, C] normalised
with ImageNet mean/std, ``label`` int32 [b] (or [b, H, W]); eval batches add
``mask`` float32 [b] (1 real example, 0 padding). Padding rows hold the
normalised zero image and label 0 (255 for spatial labels).
"""
import concurrent.futures
from typing import Callable, Iterator, Optional

import numpy as np

from jaxres import data as data_lib
from jaxres.data import batching
from jaxres.data import errors

# augment_fn(image [H, W, C] uint8, label, rng) -> (image, label).
AugmentFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


class ArraySource:
  """In-memory images [N, H, W, C] and labels [N] or [N, H, W] (a Source)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               prefix: str = 'arrays'):
    if len(images) != len(labels):
      raise ValueError(f'{len(images)} images but {len(labels)} labels.')
    self.images, self.labels, self.prefix = images, labels, prefix

  def __len__(self):
    return len(self.images)

  def name(self, index):
    return f'{self.prefix}[{index}]'

  def load(self, index):
    return self.images[index], self.labels[index]

  def load_label(self, index):
    return self.labels[index]

  def image_size(self, index):
    return tuple(self.images.shape[1:3])


def check_train_size(num_examples: int, global_batch_size: int) -> int:
  """Steps per epoch; raises if the data do not fill one global batch."""
  per_epoch = batching.steps_per_epoch(num_examples, global_batch_size)
  if per_epoch < 1:
    raise errors.LabelError(
        f'Dataset of {num_examples} examples is smaller than the global '
        f'batch size {global_batch_size}; lower config.batch_size.')
  return per_epoch


def _fields(images, labels, normalize: bool) -> batching.Fields:
  if normalize:
    image = (images.shape[1:], np.float32,
             data_lib.normalize(np.zeros(images.shape[-1], np.uint8)))
  else:
    image = (images.shape[1:], images.dtype, 0)
  label_pad = 0 if labels.ndim == 1 else data_lib.IGNORE_LABEL
  return dict(image=image, label=(labels.shape[1:], np.int32, label_pad))


def _write(slot, image, label, normalize: bool) -> None:
  if normalize:
    data_lib.normalize_into(slot['image'], image)
  else:
    slot['image'] = image
  slot['label'] = label


def _reader(images, labels) -> batching.Reader:
  return batching.Reader(ArraySource(images, labels), 'arrays', 'stop',
                         batching.BadImageLog())


def _pool(pool, workers: int = 2) -> concurrent.futures.Executor:
  return pool or concurrent.futures.ThreadPoolExecutor(
      workers, thread_name_prefix='array-data')


def train_iterator(images: np.ndarray,
                   labels: np.ndarray,
                   batch_size: int,
                   seed: int,
                   start_step: int = 0,
                   process_index: int = 0,
                   process_count: int = 1,
                   augment_fn: Optional[AugmentFn] = None,
                   normalize: bool = True,
                   pool: Optional[concurrent.futures.Executor] = None,
                   prefetch: int = 2) -> Iterator[dict]:
  """Yields this process's training batches forever, from ``start_step`` on.

  Args:
    images: uint8 [N, H, W, C], the whole dataset (same on every process).
    labels: int [N] or [N, H, W].
    batch_size: GLOBAL batch size; this process yields its
      ``batch_size // process_count`` rows.
    seed: order and augmentation seed (non-negative).
    start_step: first step to yield; equals skipping that many batches.
    process_index, process_count: this process's slice of the global batch.
    augment_fn: optional per-example ``(image, label, rng) -> (image, label)``.
    normalize: map images to float32 with ImageNet mean/std.
    pool: threads that make the examples (None: two of its own).
    prefetch: batches made ahead of the consumer.
  """
  return train_batches(images, labels, batch_size, seed, process_index,
                       process_count, augment_fn, normalize, pool,
                       prefetch)(start_step)


def train_batches(images, labels, batch_size, seed, process_index=0,
                  process_count=1, augment_fn=None, normalize=True,
                  pool=None, prefetch=2) -> batching.TrainBatches:
  """``train_iterator`` as a function of the start step (checked at once)."""
  check_train_size(len(images), batch_size)

  def transform(example, rng, slot):
    image, label = example
    if augment_fn is not None:
      image, label = augment_fn(image, label, rng)
    _write(slot, image, label, normalize)

  return batching.TrainBatches(
      _reader(images, labels), transform, _fields(images, labels, normalize),
      batch_size=batch_size, seed=seed, process_index=process_index,
      process_count=process_count, pool=_pool(pool), prefetch=prefetch)


def eval_iterator(images: np.ndarray,
                  labels: np.ndarray,
                  batch_size: int,
                  process_index: int = 0,
                  process_count: int = 1,
                  normalize: bool = True,
                  pool: Optional[concurrent.futures.Executor] = None,
                  prefetch: int = 2) -> Iterator[dict]:
  """Yields padded eval batches covering every example exactly once.

  Global batch ``j`` holds examples ``[j * B, (j + 1) * B)`` with ``B =
  batch_size`` (GLOBAL); process ``p`` takes its contiguous slice. Every
  process yields the same number of batches; slots past the end of the data
  are the zero image (segmentation labels 255) with ``mask`` 0.
  """
  def transform(example, slot):
    _write(slot, *example, normalize)

  return batching.EvalBatches(
      _reader(images, labels), transform, _fields(images, labels, normalize),
      batch_size=batch_size, process_index=process_index,
      process_count=process_count, pool=_pool(pool), prefetch=prefetch)()


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
