"""Surviving faults: SIGKILL, SIGTERM, corrupt checkpoints, NaN, bad input."""
import os
import signal
import subprocess
import time

import pytest

from tests import helpers


def _wait_for_checkpoint(workdir, step, proc, timeout=240):
  path = os.path.join(workdir, 'checkpoints', str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, f'no checkpoint {step} after {timeout}s'
    time.sleep(0.2)


@pytest.fixture(scope='module')
def reference_run(tiny_run):
  """An uninterrupted 8-step run; its final state is the ground truth."""
  return helpers.load_state(tiny_run.workdir, 8)


def test_sigkill_then_resume_is_bitwise_exact(tmp_path, reference_run):
  workdir = str(tmp_path)
  proc = subprocess.Popen(helpers.main_cmd(workdir), cwd=helpers.ROOT,
                          env=helpers.env(), stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, 4, proc)
  proc.kill()  # SIGKILL: no chance to save, somewhere after step 4.
  proc.wait()
  helpers.run_main(workdir)  # Same command again resumes.
  helpers.assert_trees_equal(helpers.load_state(workdir, 8), reference_run)


@pytest.mark.parametrize('signum, code, message', [
    (signal.SIGTERM, 0, 'Preempted'), (signal.SIGINT, 130, 'Interrupted')])
def test_signal_saves_and_exits_cleanly(tmp_path, reference_run, signum, code,
                                        message):
  workdir = str(tmp_path)
  proc = subprocess.Popen(
      helpers.main_cmd(workdir, '--config.checkpoint_every_steps=100'),
      cwd=helpers.ROOT, env=helpers.env(), stderr=subprocess.PIPE, text=True)
  # Wait until training runs (a log line for step 2), then preempt.
  deadline = time.time() + 240
  seen = ''
  while 'step 2/8' not in seen:
    line = proc.stderr.readline()
    assert line or proc.poll() is None, seen[-3000:]
    seen += line
    assert time.time() < deadline
  proc.send_signal(signum)
  rest = proc.communicate(timeout=120)[1]
  assert proc.returncode == code, rest[-3000:]
  assert message in rest and 'Run the same command to resume' in rest
  assert 'Traceback' not in rest
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if s.isdigit())
  assert saved and 2 <= saved[-1] < 8
  helpers.run_main(workdir, '--config.checkpoint_every_steps=100')
  helpers.assert_trees_equal(helpers.load_state(workdir, 8), reference_run)


def test_corrupt_latest_checkpoint_falls_back(tmp_path, reference_run,
                                              tiny_run):
  workdir = tiny_run.copy(tmp_path)  # A finished 8-step run.
  helpers.truncate_checkpoint(workdir, 8)  # The newest checkpoint.
  proc = helpers.run_main(workdir)
  assert 'step 8' in proc.stderr and 'unreadable' in proc.stderr
  assert 'Restored checkpoint step 6' in proc.stderr
  # The unreadable checkpoint is kept aside, not deleted.
  kept = [n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
          if n.startswith('8.unreadable')]
  assert kept
  helpers.assert_trees_equal(helpers.load_state(workdir, 8), reference_run)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path):
  workdir = str(tmp_path)
  proc = helpers.run_main(workdir, '--config.learning_rate=1e30', check=False)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert 'Non-finite' in proc.stderr and 'at step' in proc.stderr
  steps = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  for step in steps:  # Whatever was saved holds finite parameters only.
    import numpy as np  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(
        helpers.load_state(workdir, step)['params']))


def _tiny(**overrides):
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  c = tiny_config.get_config()
  c.unlock()
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


@pytest.mark.parametrize('overrides, message', [
    ({'learning_rate': -0.1}, 'learning_rate=-0.1 must be > 0'),
    ({'batch_size': 12}, 'multiple of the device count'),
    ({'model_kwargs.output_stride': 12}, 'output_stride=12 is not one of'),
    ({'model': 'resnet51'}, 'Known models'),
    ({'optimizer': 'adam'}, "optimizer='adam' is not one of"),
])
def test_bad_config_is_a_clear_error(tmp_path, capsys, overrides, message):
  from jaxres import runner  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    runner.run(_tiny(**overrides), str(tmp_path / 'w'))
  assert e.value.code == 2
  assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'w')  # Nothing written.


def test_unknown_config_field_is_a_clear_error(tmp_path):
  proc = helpers.run_main(str(tmp_path / 'w'), '--config.no_such_field=1',
                          check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'bad --config override' in proc.stderr and 'no_such_field' in proc.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_workdir_of_another_experiment_is_refused(tmp_path, tiny_run):
  workdir = tiny_run.copy(tmp_path)  # A finished run of the tiny config.
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  proc = helpers.run_main(workdir, '--config.model=resnet34', check=False)
  assert proc.returncode == 2
  assert 'different experiment' in proc.stderr and 'resnet34' in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
