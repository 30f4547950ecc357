"""Random inputs for benchmarks: no files, no TensorFlow, no per-step work.

One batch is drawn once and yielded again at every step, so the input pipeline
costs nothing and a benchmark measures the device alone.
"""
from typing import Iterator, Optional

import numpy as np

from jaxres import data as data_lib
from jaxres.data import batching

# Dataset sizes reported for 'synthetic' (ImageNet's train size, so that
# epoch-based schedules mean the same as on ImageNet) and eval batches per pass.
NUM_TRAIN_EXAMPLES = 1_281_167
EVAL_BATCHES = 4


def synthetic_batch(batch_size: int,
                    image_size,
                    num_classes: int,
                    seed: int = 0,
                    *,
                    dtype='float32',
                    channels: int = 3,
                    segmentation: bool = False) -> dict:
  """One random batch: ``image`` [b, H, W, C] ~ N(0, 1), int32 ``label``.

  Labels are [b] for classification and [b, H, W] for segmentation (with a
  few 255 ignore pixels, like real masks).
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  height, width = image_size
  rng = np.random.default_rng(seed)
  image = rng.standard_normal((batch_size, height, width, channels),
                              np.float32).astype(batching.np_dtype(dtype))
  label_shape = (batch_size, height, width) if segmentation else (batch_size,)
  label = rng.integers(0, num_classes, label_shape, dtype=np.int32)
  if segmentation:
    label[rng.random(label_shape) < 0.01] = data_lib.IGNORE_LABEL
  return dict(image=image, label=label)


def synthetic_iterator(batch_size: int,
                       image_size,
                       num_classes: int,
                       seed: int = 0,
                       *,
                       dtype='float32',
                       channels: int = 3,
                       segmentation: bool = False,
                       num_batches: Optional[int] = None,
                       with_mask: bool = False,
                       process_index: int = 0,
                       process_count: int = 1) -> Iterator[dict]:
  """Yields the same random batch ``num_batches`` times (None: forever).

  Args:
    batch_size: GLOBAL batch size; the global batch is drawn from ``seed`` and
      this process yields its ``batch_size // process_count`` rows.
    image_size: int or (height, width).
    num_classes: labels are drawn from [0, num_classes).
    seed: seed of the one batch.
    dtype: image dtype, e.g. 'float32' or 'bfloat16'.
    channels: image channels.
    segmentation: per-pixel labels [b, H, W] instead of [b].
    num_batches: length of the iterator; None for an endless one.
    with_mask: add an all-ones float32 ``mask`` [b] like eval batches.
    process_index, process_count: this process's rows of the global batch.
  """
  rows = batching.per_process(batch_size, process_count, 'batch_size')
  batch = synthetic_batch(batch_size, image_size, num_classes, seed,
                          dtype=dtype, channels=channels,
                          segmentation=segmentation)
  lo = process_index * rows
  batch = {k: v[lo:lo + rows] for k, v in batch.items()}
  if with_mask:
    batch['mask'] = np.ones((rows,), np.float32)
  step = 0
  while num_batches is None or step < num_batches:
    yield dict(batch)
    step += 1
