"""Random-access batching: order, augmentation rngs, padding, bad files.

Every pipeline that can read example ``i`` of a split directly (image folders,
VOC folders, TFDS segmentation records held in memory, in-memory arrays) is
batched here, so they share one order, one multi-process split and one policy
for unreadable files.

  source: ``len(source)``, ``source.name(i)`` (what messages call example i)
    and ``source.load(i)`` (the example in any form its transform takes;
    raises BadImageError when the file cannot be read).
  transform: ``transform(example, rng, slot)`` for training (``rng`` a numpy
    Generator), ``transform(example, slot)`` for evaluation. ``slot[key]`` is
    the example's row of batch array ``key`` (write into it, or assign with
    ``slot[key] = value``). A transform raises BadImageError before it
    writes anything.

Training order, a pure function of (seed, step): with global batch B and
S = n // B steps per epoch (the remainder of each epoch is dropped), step s is
batch s % S of epoch e = s // S, which reads the examples in the order
``epoch_permutation(n, seed, e)``. Example j of the global batch at step s is
transformed with ``np.random.default_rng([seed, 1, s, j])``. Process p of P
makes rows [p B / P, (p + 1) B / P) of each global batch, so the global batch
does not depend on P, and ``TrainBatches(...)(k)`` yields what a fresh
iterator yields from its k-th batch on.

Evaluation: global batch k holds examples [k B, (k + 1) B) in source order,
each process its contiguous rows; rows past the end are padding with
``mask`` 0, so every example counts once and every process yields
ceil(n / B) batches.

Unreadable files (config.on_bad_image): 'stop' raises BadImageError naming
the file and the fix; 'skip' logs and counts it, then uses the next example
of the permutation with the same rng (training) or masks the row (eval).
Examples are made on a thread pool (PIL and numpy release the GIL),
``prefetch`` batches ahead of the consumer.
"""
import collections
import concurrent.futures
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Protocol, Tuple

from absl import logging
import ml_dtypes
import numpy as np

from jaxres.data import errors

PERMUTATION_STREAM = 0
AUGMENT_STREAM = 1
ON_BAD_IMAGE = ('skip', 'stop')

# name -> (shape of one example, dtype, fill value of rows and padding).
Fields = Dict[str, Tuple[Tuple[int, ...], Any, Any]]


class Source(Protocol):
  """Random access to one split."""

  def __len__(self) -> int:
    ...

  def name(self, index: int) -> str:
    """What to call example ``index`` in messages (a file name or an id)."""

  def load(self, index: int) -> Any:
    """The example for the transform; raises BadImageError if unreadable."""


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder of each epoch is dropped)."""
  return num_examples // global_batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of ``epoch``: a pure function of (seed, epoch)."""
  rng = np.random.default_rng([seed, PERMUTATION_STREAM, epoch])
  return rng.permutation(num_examples)


def example_rng(seed: int, step: int, position: int) -> np.random.Generator:
  """The generator of the example at ``position`` of the global batch."""
  return np.random.default_rng([seed, AUGMENT_STREAM, step, position])


def per_process(global_size: int, process_count: int, name: str) -> int:
  """The rows of a global batch of config.<name> that one process makes."""
  if process_count < 1:
    raise ValueError(f'process_count={process_count} must be positive.')
  if global_size <= 0 or global_size % process_count:
    raise errors.LabelError(
        f'config.{name}={global_size} is not divisible by the number of '
        f'processes ({process_count}); it is the global batch size.')
  return global_size // process_count


def _offset(process_index: int, process_count: int, rows: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in '
                     f'[0, {process_count}).')
  return process_index * rows


def np_dtype(dtype) -> np.dtype:
  """numpy dtype of a config string; 'bfloat16' (or 'bf16') via ml_dtypes."""
  if isinstance(dtype, str) and dtype in ('bfloat16', 'bf16'):
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(dtype)


# ----------------------------------------------------------------------------
# Unreadable files.
# ----------------------------------------------------------------------------


class BadImageLog:
  """Thread-safe record of unreadable files, for the 'skip' policy."""

  def __init__(self):
    self._lock = threading.Lock()
    self.files: Dict[str, str] = {}
    self._indices = collections.defaultdict(set)

  def add(self, split: str, index: int, name: str, reason: str) -> None:
    with self._lock:
      if name not in self.files:
        logging.warning('Skipping example %s: %s', name, reason)
      self.files[name] = reason
      self._indices[split].add(index)

  def is_bad(self, split: str, index: int) -> bool:
    return index in self._indices[split]

  @property
  def count(self) -> int:
    return len(self.files)


def check_on_bad_image(on_bad_image: str) -> str:
  if on_bad_image not in ON_BAD_IMAGE:
    raise errors.LabelError('config.on_bad_image must be "skip" or "stop", '
                            f'got {on_bad_image!r}.')
  return on_bad_image


class Reader:
  """One split of a source under the config.on_bad_image policy.

  Attributes:
    source: the split's Source.
    split: its name in the BadImageLog (e.g. 'train', 'eval').
    where: how messages name the split (a folder, "split 'train'").
  """

  def __init__(self, source: Source, split: str, on_bad_image: str,
               bad_images: BadImageLog, where: Optional[str] = None):
    self.source, self.split = source, split
    self.on_bad_image = check_on_bad_image(on_bad_image)
    self.bad_images = bad_images
    self.where = where or f'split {split!r}'

  def __len__(self) -> int:
    return len(self.source)

  def unreadable(self, index: int, error: errors.BadImageError) -> None:
    """Applies the policy: raises ('stop') or records ('skip')."""
    if self.on_bad_image == 'stop':
      raise errors.BadImageError(
          f'{error}\nSet config.on_bad_image="skip" to count and skip '
          'unreadable files instead of stopping.') from error
    self.bad_images.add(self.split, index, self.source.name(index), str(error))

  def apply(self, index: int, use: Callable[[Any], None]) -> bool:
    """use(source.load(index)); False if the example is unreadable (skipped)."""
    if self.bad_images.is_bad(self.split, index):
      return False
    try:
      use(self.source.load(index))
    except errors.BadImageError as e:
      self.unreadable(index, e)
      return False
    return True

  def log_count(self, when: str) -> None:
    if self.bad_images.count:
      logging.warning('%s: %d unreadable image files skipped so far: %s',
                      when, self.bad_images.count,
                      errors.list_names(list(self.bad_images.files), 5))


# ----------------------------------------------------------------------------
# Batches.
# ----------------------------------------------------------------------------


class Slot:
  """Row ``index`` of every array of a batch (what a transform fills)."""
  __slots__ = ('_batch', '_index')

  def __init__(self, batch: Dict[str, np.ndarray], index: int):
    self._batch, self._index = batch, index

  def __getitem__(self, key: str) -> np.ndarray:
    return self._batch[key][self._index]

  def __setitem__(self, key: str, value) -> None:
    self._batch[key][self._index] = value


def _empty_batch(fields: Fields, rows: int) -> Dict[str, np.ndarray]:
  batch = {}
  for key, (shape, dtype, fill) in fields.items():
    batch[key] = np.empty((rows, *shape), dtype)
    batch[key][...] = fill
  return batch


def _prefetched(make_batch: Callable[[int], Tuple[dict, list]], first: int,
                end: Optional[int], prefetch: int) -> Iterator[dict]:
  """Yields make_batch(k)[0] for k = first.. (end), keeping `prefetch` ahead."""
  pending = collections.deque()
  k = first
  try:
    while True:
      while len(pending) <= prefetch and (end is None or k < end):
        pending.append(make_batch(k))
        k += 1
      if not pending:
        return
      batch, futures = pending.popleft()
      for f in futures:
        f.result()  # Re-raises a worker's exception here.
      yield batch
  finally:
    for _, futures in pending:
      for f in futures:
        f.cancel()


class TrainBatches:
  """``train_batches(start_step)``: this process's batches from that step on.

  The sizes are checked when it is made; each call starts a new iterator.
  """

  def __init__(self, reader: Reader, transform: Callable, fields: Fields, *,
               batch_size: int, seed: int, process_index: int,
               process_count: int, pool: concurrent.futures.Executor,
               prefetch: int = 2):
    self.reader, self.transform, self.fields = reader, transform, fields
    self.batch_size, self.seed = batch_size, seed
    self.rows = per_process(batch_size, process_count, 'batch_size')
    self.offset = _offset(process_index, process_count, self.rows)
    self.pool, self.prefetch = pool, prefetch
    self.num_examples = len(reader)
    self.steps_per_epoch = steps_per_epoch(self.num_examples, batch_size)
    if self.steps_per_epoch < 1:
      raise errors.LabelError(
          f'{reader.where} holds {self.num_examples} examples, fewer than '
          f'the global batch size {batch_size}; lower config.batch_size.')
    self._lock = threading.Lock()
    self._permutation = (None, None)

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if self._permutation[0] != epoch:
        self._permutation = (epoch, epoch_permutation(self.num_examples,
                                                      self.seed, epoch))
      return self._permutation[1]

  def _example(self, step: int, j: int, perm: np.ndarray, slot: Slot):
    n = self.num_examples
    pos = (step % self.steps_per_epoch) * self.batch_size + j
    for k in range(n):  # An unreadable (skipped) file: take the next one.
      rng = example_rng(self.seed, step, j)
      use = lambda example, rng=rng: self.transform(example, rng, slot)
      if self.reader.apply(int(perm[(pos + k) % n]), use):
        return
    raise errors.BadImageError(
        f'No readable example in {self.reader.where}.')

  def __call__(self, start_step: int = 0) -> Iterator[dict]:
    def make_batch(step):
      if step % self.steps_per_epoch == 0 and step != start_step:
        self.reader.log_count(
            f'Start of epoch {step // self.steps_per_epoch}')
      batch = _empty_batch(self.fields, self.rows)
      perm = self.permutation(step // self.steps_per_epoch)
      futures = [
          self.pool.submit(self._example, step, self.offset + i, perm,
                           Slot(batch, i)) for i in range(self.rows)]
      return batch, futures

    return _prefetched(make_batch, start_step, None, self.prefetch)


class EvalBatches:
  """``eval_batches()``: one padded pass, with a float32 ``mask`` field."""

  def __init__(self, reader: Reader, transform: Callable, fields: Fields, *,
               batch_size: int, process_index: int, process_count: int,
               pool: concurrent.futures.Executor, prefetch: int = 2):
    self.reader, self.transform = reader, transform
    self.fields = dict(fields, mask=((), np.float32, 0.0))
    self.batch_size = batch_size
    self.rows = per_process(batch_size, process_count, 'eval_batch_size')
    self.offset = _offset(process_index, process_count, self.rows)
    self.pool, self.prefetch = pool, prefetch
    self.num_examples = len(reader)
    self.num_batches = -(-self.num_examples // batch_size)

  def _example(self, index: int, slot: Slot):
    if self.reader.apply(index, lambda example: self.transform(example, slot)):
      slot['mask'] = 1.0

  def _batches(self) -> Iterator[dict]:
    def make_batch(k):
      batch = _empty_batch(self.fields, self.rows)
      start = k * self.batch_size + self.offset
      real = min(self.rows, max(self.num_examples - start, 0))
      futures = [self.pool.submit(self._example, start + i, Slot(batch, i))
                 for i in range(real)]
      return batch, futures

    yield from _prefetched(make_batch, 0, self.num_batches, self.prefetch)
    self.reader.log_count(f'Eval pass over {self.reader.where}')

  def __call__(self) -> Iterator[dict]:
    return self._batches()
