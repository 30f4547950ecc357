"""TFDS training reads: how processes split the records ('shards', 'stream').

Epoch ``e`` shuffles files and records with a seed derived from (seed, e); a
record's augmentation (Inception-style crop, flip, optional policy) uses
stateless random ops seeded by (epoch seed, position in the epoch), and
``start_step`` resumes by skipping encoded records of the current epoch before
any decoding. Two ways to split the work between processes (``read``;
config.tfds_read, where 'auto' is resolved by ``jaxres.data.tfds_read``):

  'shards': each process reads its own equal part of the split
    (``tfds.even_splits``). Reads 1/P of the bytes, but the order is a
    function of (seed, step, process_count): a run can only continue on the
    same number of processes.
  'stream': every process reads the whole record stream in one global order
    and decodes only its rows of each global batch. Global batch k is records
    [k B, (k + 1) B) of the epoch's stream whatever the number of processes,
    so a run can continue on any number; each process reads all the bytes
    (P times the reads of 'shards'; decoding, the costly part, is not
    repeated). With one process both are the same order.

The per-record work (decode the crop window, flip, resize, normalise) is
``imagenet.preprocess_for_train``; ``batches`` is the map-and-batch stage that
experiments/input_pipeline_benchmark.py measures. (Not named tfds_read.py:
importing a submodule of that name would shadow ``jaxres.data.tfds_read``.)
"""
from typing import Iterator, Optional

import numpy as np

from jaxres.data import batching
from jaxres.data import imagenet

READ_MODES = ('shards', 'stream')


def epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def batches(ds, *, seed: int, batch_size: int, image_size: int, dtype,
            is_jpeg: bool, augment=None, interpolation: Optional[str] = None,
            options=None):
  """(index, {'image': encoded, 'label'}) records -> prefetched batches.

  Record ``index`` is augmented with the stateless seed (seed, index).
  ``options``: tf.data.Options (default ``imagenet.dataset_options()``).
  """
  tf = imagenet._tf()  # pylint: disable=protected-access

  def preprocess(index, example):
    record_seed = tf.stack([tf.constant(seed, tf.int64), index])
    image = imagenet.preprocess_for_train(
        example['image'], record_seed, image_size, dtype, is_jpeg, augment,
        interpolation)
    return dict(image=image, label=tf.cast(example['label'], tf.int32))

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(
      options or imagenet.dataset_options())


def _train_epoch(builder, split, *, seed, num_records, skip, rows,
                 image_size, dtype, shuffle_buffer, augment, interpolation):
  """Records [skip, num_records) of the epoch's stream, batched.

  ``rows = (lo, hi, global_batch)``: of each global batch (``global_batch``
  consecutive records) keep rows [lo, hi), filtered before decoding.
  """
  # pylint: disable-next=protected-access
  tf, tfds = imagenet._tf(), imagenet._tfds()
  lo, hi, global_batch = rows
  ds = builder.as_dataset(
      split=split,
      shuffle_files=True,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=seed,
                                  shuffle_reshuffle_each_iteration=False,
                                  options=imagenet.dataset_options()))
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
  ds = ds.enumerate().take(num_records).skip(skip)
  if hi - lo < global_batch:  # Keep this process's rows, still encoded.
    ds = ds.filter(lambda index, _: tf.logical_and(
        index % global_batch >= lo, index % global_batch < hi))
  return batches(ds, seed=seed, batch_size=hi - lo, image_size=image_size,
                 dtype=dtype, is_jpeg=imagenet.is_jpeg(builder),
                 augment=augment, interpolation=interpolation)


def train_iterator(builder,
                   batch_size: int,
                   *,
                   seed: int,
                   start_step: int = 0,
                   process_index: int = 0,
                   process_count: int = 1,
                   image_size: int = 224,
                   dtype='float32',
                   shuffle_buffer: int = 16 * 1024,
                   split: str = 'train',
                   read: str = 'shards',
                   augment=None,
                   interpolation: Optional[str] = None) -> Iterator[dict]:
  """Yields this process's training batches forever, from ``start_step``.

  Args:
    builder: from ``imagenet.get_builder``.
    batch_size: GLOBAL batch size; this process yields
      ``batch_size // process_count`` examples per batch, from its own part
      of the split.
    seed: order and augmentation seed.
    start_step: first step to yield; equals skipping that many batches.
    process_index, process_count: this process's part of the work.
    image_size: output side.
    dtype: image dtype, 'float32' or 'bfloat16'.
    shuffle_buffer: record shuffle buffer, examples.
    split: TFDS split to read.
    read: 'shards' (this process's part of the split; the order depends on
      process_count) or 'stream' (the whole stream, this process's rows of
      each global batch; the order does not depend on process_count).
    augment: an ``augment.Augment`` (policy, random erasing) or None.
    interpolation: 'bicubic' (None) or 'bilinear', for the crop's resize.

  Yields:
    dict(image=[b, S, S, 3] normalised, label=int32 [b]) numpy batches.
  """
  tfds = imagenet._tfds()  # pylint: disable=protected-access
  if read not in READ_MODES:
    raise ValueError(f'config.tfds_read={read!r}: use one of {READ_MODES}.')
  rows = batching.per_process(batch_size, process_count, 'batch_size')
  if read == 'shards':
    split = imagenet.process_splits(split, process_count, True)[process_index]
    lo, global_batch = 0, rows
  else:
    lo, global_batch = process_index * rows, batch_size
  per_epoch = imagenet.num_examples(builder, split) // global_batch
  if per_epoch < 1:
    raise ValueError(f'Split {split} is smaller than one batch '
                     f'({global_batch}).')
  epoch, step_in_epoch = divmod(start_step, per_epoch)
  while True:
    ds = _train_epoch(
        builder, split, seed=epoch_seed(seed, epoch),
        num_records=per_epoch * global_batch,
        skip=step_in_epoch * global_batch, rows=(lo, lo + rows, global_batch),
        image_size=image_size, dtype=imagenet.tf_dtype(dtype),
        shuffle_buffer=shuffle_buffer, augment=augment,
        interpolation=interpolation)
    yield from tfds.as_numpy(ds)
    epoch, step_in_epoch = epoch + 1, 0
