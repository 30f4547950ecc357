"""Tests for jaxres/data/batching.py: order, process slices, padding, skips."""
import concurrent.futures

import numpy as np
import pytest

from jaxres.data import batching
from jaxres.data import errors

SEED = 4


class _Numbers:
  """Example i is the number i; the indices in `bad` cannot be read."""

  def __init__(self, n, bad=()):
    self.n, self.bad = n, set(bad)

  def __len__(self):
    return self.n

  def name(self, index):
    return f'numbers[{index}]'

  def load(self, index):
    if index in self.bad:
      raise errors.BadImageError(f'Cannot read numbers[{index}]')
    return index


def _train_transform(example, rng, slot):
  slot['index'] = example
  slot['draw'] = rng.integers(1 << 30)
  slot['row'][:] = example  # A row of a 2-D field, written in place.


def _eval_transform(example, slot):
  slot['index'] = example


FIELDS = dict(index=((), np.int32, -1), draw=((), np.int64, -1),
              row=((3,), np.float32, 0))


@pytest.fixture(scope='module')
def pool():
  with concurrent.futures.ThreadPoolExecutor(2) as p:
    yield p


def _reader(source, on_bad_image='stop', log=None):
  return batching.Reader(source, 'train', on_bad_image,
                         log or batching.BadImageLog())


def _train(source, pool, batch_size=8, process_index=0, process_count=1,
           **kwargs):
  return batching.TrainBatches(
      _reader(source, **kwargs), _train_transform, FIELDS,
      batch_size=batch_size, seed=SEED, process_index=process_index,
      process_count=process_count, pool=pool, prefetch=1)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_order_and_rngs_are_functions_of_seed_step_and_position(pool):
  n, batch = 30, 8  # 3 steps per epoch, 6 examples dropped each epoch.
  fresh = _take(_train(_Numbers(n), pool)(0), 9)
  for step, b in enumerate(fresh):
    epoch, k = divmod(step, 3)
    perm = batching.epoch_permutation(n, SEED, epoch)
    np.testing.assert_array_equal(b['index'], perm[k * batch:(k + 1) * batch])
    np.testing.assert_array_equal(b['row'], np.repeat(b['index'], 3)
                                  .reshape(-1, 3))
    want = [batching.example_rng(SEED, step, j).integers(1 << 30)
            for j in range(batch)]
    np.testing.assert_array_equal(b['draw'], want)
  for step in range(0, 9, 3):  # Each epoch: no example twice.
    epoch = np.concatenate([b['index'] for b in fresh[step:step + 3]])
    assert len(set(epoch.tolist())) == 24
  # Any start step, any process count: the same global batches.
  for process_count in (1, 2, 4):
    parts = [_take(_train(_Numbers(n), pool, process_index=p,
                          process_count=process_count)(4), 5)
             for p in range(process_count)]
    for step in range(5):
      for key in FIELDS:
        np.testing.assert_array_equal(
            np.concatenate([part[step][key] for part in parts]),
            fresh[4 + step][key])


def test_skip_takes_the_next_example_with_the_same_rng(pool, caplog):
  n = 12
  good = _take(_train(_Numbers(n), pool, batch_size=4)(0), 6)
  log = batching.BadImageLog()
  bad_index = int(good[0]['index'][1])
  skipped = _take(_train(_Numbers(n, bad=[bad_index]), pool, batch_size=4,
                         on_bad_image='skip', log=log)(0), 6)
  perm = batching.epoch_permutation(n, SEED, 0)
  assert skipped[0]['index'][1] == perm[2]  # The next of the permutation.
  np.testing.assert_array_equal(skipped[0]['draw'], good[0]['draw'])
  assert log.count == 1 and 'numbers[%d]' % bad_index in log.files
  assert 'Start of epoch 1: 1 unreadable image files skipped' in caplog.text
  for b in skipped:
    assert bad_index not in b['index']
  with pytest.raises(errors.BadImageError,
                     match=r'(?s)numbers\[\d+\].*on_bad_image="skip"'):
    _take(_train(_Numbers(n, bad=[bad_index]), pool, batch_size=4)(0), 1)
  with pytest.raises(errors.BadImageError, match='No readable example'):
    next(_train(_Numbers(4, bad=range(4)), pool, batch_size=4,
                on_bad_image='skip')(0))


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_eval_pads_with_mask_and_counts_every_example_once(pool,
                                                           process_count):
  n, batch = 11, 8
  parts = []
  for p in range(process_count):
    eval_fn = batching.EvalBatches(
        _reader(_Numbers(n, bad=[5]), on_bad_image='skip'), _eval_transform,
        dict(index=((), np.int32, -1)), batch_size=batch, process_index=p,
        process_count=process_count, pool=pool, prefetch=1)
    assert eval_fn.num_batches == 2
    parts.append(list(eval_fn()))
  assert {len(batches) for batches in parts} == {2}
  merged = {key: np.concatenate([b[key] for batches in zip(*parts)
                                 for b in batches])
            for key in ('index', 'mask')}
  assert merged['mask'].dtype == np.float32
  want = np.arange(16)
  want[5] = -1  # Unreadable: masked, left at the fill value.
  want[n:] = -1
  np.testing.assert_array_equal(merged['index'], want)
  np.testing.assert_array_equal(merged['mask'], want >= 0)


def test_sizes_and_policy_are_checked_at_construction(pool):
  with pytest.raises(errors.LabelError, match='not divisible'):
    _train(_Numbers(30), pool, batch_size=8, process_count=3)
  with pytest.raises(errors.LabelError, match='fewer than the global batch'):
    _train(_Numbers(5), pool, batch_size=8)
  with pytest.raises(errors.LabelError, match='on_bad_image'):
    _reader(_Numbers(5), on_bad_image='ignore')
  assert batching.per_process(8, 2, 'batch_size') == 4
  assert batching.np_dtype('bfloat16').name == 'bfloat16'
