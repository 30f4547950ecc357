"""Two processes on 127.0.0.1 (jax.distributed, 2 CPU devices each).

Also elastic resume across process counts: 2 processes x 2 devices continue
as 1 process x 4 devices and back, with the same examples in the same order
(equal up to float reduction order, see tests/test_elastic.py).
"""
import shutil
import socket
import subprocess

import pytest

from tests import helpers

# One worker runs the module, so its module fixture (the reference run) runs once.
pytestmark = pytest.mark.xdist_group('multihost')

ARGS = ('--config.batch_size=32', '--config.num_train_steps=6',
        '--config.checkpoint_every_steps=2',
        '--config.max_checkpoints_to_keep=10')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_two_processes(workdir, *extra, timeout=300):
  port = _free_port()
  procs = [subprocess.Popen(
      helpers.main_cmd(workdir, *ARGS, *extra,
                       f'--coordinator_address=127.0.0.1:{port}',
                       '--num_processes=2', f'--process_id={i}'),
      cwd=helpers.ROOT, env=helpers.env(devices=2), stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  errs = []
  try:
    for p in procs:
      errs.append(p.communicate(timeout=timeout)[1])
  finally:
    for p in procs:
      p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-4000:]
  return errs


@pytest.fixture(scope='module')
def single(tmp_path_factory):
  """1 process x 4 devices, 6 steps: the reference."""
  workdir = str(tmp_path_factory.mktemp('single'))
  helpers.run_main(workdir, *ARGS, devices=4)
  return workdir


def test_two_processes_match_one_and_continue_on_one(tmp_path, single):
  multi = str(tmp_path / 'multi')
  errs = _run_two_processes(multi)
  # Logging comes from process 0 only.
  assert 'step 6/6' in errs[0] and 'step 6/6' not in errs[1]
  helpers.assert_trees_close(helpers.load_state(multi, 6)['params'],
                helpers.load_state(single, 6)['params'])
  helpers.assert_trees_close(helpers.load_state(multi, 6)['batch_stats'],
                helpers.load_state(single, 6)['batch_stats'])
  # Preempted after step 2; continues as 1 process x 4 devices.
  helpers.keep_checkpoints_up_to(multi, 2)
  proc = helpers.run_main(multi, *ARGS, devices=4)
  assert 'Restored checkpoint step 2' in proc.stderr
  assert 'on 4 devices in 1 processes (it ran on 4 in 2)' in proc.stderr
  helpers.assert_trees_close(helpers.load_state(multi, 6),
                             helpers.load_state(single, 6))


def test_one_process_continues_on_two(tmp_path, single):
  workdir = str(tmp_path / 'elastic')
  shutil.copytree(single, workdir)
  helpers.keep_checkpoints_up_to(workdir, 4)
  errs = _run_two_processes(workdir)
  assert 'Restored checkpoint step 4' in errs[0]
  helpers.assert_trees_close(helpers.load_state(workdir, 6),
                             helpers.load_state(single, 6))
