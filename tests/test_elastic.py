"""Elastic resume: a run continues on another device count, exactly.

Every pipeline's training order is a function of (seed, step, position in
the global batch), so a checkpoint written on N devices continues on M with
the same examples in the same order. The end state equals an uninterrupted
run up to float reduction order: the gradient all-reduce and the BatchNorm
statistics sum over another number of partial sums, so bitwise equality is
not expected (tolerance: rtol 1e-4, atol 1e-5, as the 8-devices-equal-1 test).
Processes: tests/test_multihost.py.
"""
import json
import os
import shutil

import pytest

from tests import helpers

# One worker runs the module, so its module fixture (the reference run) runs once.
pytestmark = pytest.mark.xdist_group('elastic')

KEEP = '--config.max_checkpoints_to_keep=10'


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """8 devices, batch 32, 8 steps, saved at 2, 4, 6, 8: the uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  helpers.run_main(workdir, KEEP, devices=8)
  return workdir


def _copy(reference, tmp_path, name):
  workdir = str(tmp_path / name)
  shutil.copytree(reference, workdir)
  return workdir


def _final(workdir):
  state = helpers.load_state(workdir, 8)
  return {k: state[k] for k in ('params', 'batch_stats', 'opt_state')}


def test_eight_devices_to_four_and_back(tmp_path, reference):
  # 8 devices for steps 0-2, 4 devices for 2-4, 8 devices for 4-8.
  elastic = _copy(reference, tmp_path, 'elastic')
  helpers.keep_checkpoints_up_to(elastic, 2)
  proc = helpers.run_main(elastic, KEEP, devices=4)
  assert 'Restored checkpoint step 2' in proc.stderr
  assert 'on 4 devices in 1 processes (it ran on 8 in 1)' in proc.stderr
  helpers.keep_checkpoints_up_to(elastic, 4)
  proc = helpers.run_main(elastic, KEEP, devices=8)
  assert 'Restored checkpoint step 4' in proc.stderr
  helpers.assert_trees_close(_final(elastic), _final(reference))
  record = json.loads(open(os.path.join(elastic, 'experiment.json')).read())
  assert record['topology'] == {'devices': 8, 'processes': 1,
                                'data_order': 'global'}


def test_a_run_read_in_process_shards_only_continues_on_as_many(
    tmp_path, reference):
  workdir = _copy(reference, tmp_path, 'shards')
  path = os.path.join(workdir, 'experiment.json')
  record = json.loads(open(path).read())
  record['topology'] = {'devices': 4, 'processes': 2,
                        'data_order': 'shards of 2 processes'}
  with open(path, 'w') as f:
    f.write(json.dumps(record))
  before = sorted(os.listdir(workdir)), helpers.checkpoint_steps(workdir)
  proc = helpers.run_main(workdir, KEEP, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'per-process shards' in proc.stderr
  assert 'Continue it on 2 processes' in proc.stderr
  assert 'tfds_read=stream' in proc.stderr
  assert (sorted(os.listdir(workdir)), helpers.checkpoint_steps(workdir)) == (
      before)


def test_another_global_batch_is_refused_unless_allowed(tmp_path, reference):
  workdir = _copy(reference, tmp_path, 'batch')  # Batch 32, 8 steps.
  helpers.keep_checkpoints_up_to(workdir, 4)  # Preempted after step 4.
  # Durations in steps stay steps: 16 steps of 16 are the same 256 examples.
  more = (KEEP, '--config.num_train_steps=16')
  before = helpers.checkpoint_steps(workdir)
  proc = helpers.run_main(workdir, *more, '--config.batch_size=16',
                          check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'global batch 32; this config has 16' in proc.stderr
  assert 'allow_batch_size_change' in proc.stderr
  assert helpers.checkpoint_steps(workdir) == before
  # Allowed: step 4 at batch 32 (128 examples) is step 8 at batch 16.
  proc = helpers.run_main(workdir, *more, '--config.batch_size=16',
                          '--config.eval_batch_size=16',
                          '--config.allow_batch_size_change=True')
  assert 'step 4 becomes step 8 (128 examples seen)' in proc.stderr
  aside = os.path.join(workdir, 'checkpoints-batch32-step4')
  assert helpers.checkpoint_steps(aside.replace('checkpoints-batch32-step4', '')
                                  ) == [8, 10, 12, 14, 16]
  assert sorted(int(s) for s in os.listdir(aside) if s.isdigit()) == before
  state = helpers.load_state(workdir, 16)
  assert int(state['step']) == 16
  counts = [v for k, v in _flat(state['opt_state']).items()
            if k.endswith('count')]
  assert counts and all(int(c) == 16 for c in counts)
  record = json.loads(open(os.path.join(workdir, 'experiment.json')).read())
  assert record['hparams']['batch_size'] == 16
  # Continuing again at 16 needs no flag and rescales nothing.
  proc = helpers.run_main(workdir, *more, '--config.batch_size=16',
                          '--config.eval_batch_size=16')
  assert 'is complete (step 16 of 16)' in proc.stderr


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}/{k}'))
    return out
  if isinstance(tree, (list, tuple)):
    out = {}
    for i, v in enumerate(tree):
      out.update(_flat(v, f'{prefix}/{i}'))
    return out
  return {prefix: tree}
