"""Faults a long run meets: bit rot, two runs on one workdir, disk full,
NaN with a save in flight, a bad evaluation, a refused restore."""
import errno
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from jaxres import checkpoint as ckpt_lib
from jaxres import runner
from tests import helpers
from tests import tiny_config


def _config(**overrides):
  c = tiny_config.get_config()
  c.unlock()
  c.shapes_train_size = 128
  c.shapes_eval_size = 32
  c.num_train_steps = 4
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


def _flip_one_bit_of_the_largest_array_file(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir)
           for f in names if not f.startswith('_') and not f.endswith('.json')
           and 'ocdbt' not in f and 'manifest' not in f]
  target = max(files, key=os.path.getsize)
  with open(target, 'r+b') as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x10
    f.seek(0)
    f.write(data)


def test_checksums_catch_a_flipped_bit(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  runner.run(_config(), workdir)
  manager = ckpt_lib.make_manager(f'{workdir}/checkpoints', max_to_keep=3)
  state = helpers.load_state(workdir, 4)
  assert manager.restore(4, args=ckpt_lib.ocp.args.Composite(
      checksums=ckpt_lib.ocp.args.JsonRestore()))['checksums'] == (
          ckpt_lib.checksums(state))
  manager.close()
  _flip_one_bit_of_the_largest_array_file(
      os.path.join(workdir, 'checkpoints', '4', 'state'))

  # Evaluation refuses the damaged step, naming it.
  with pytest.raises(SystemExit) as e:
    runner.run(_config(), workdir, mode='eval', step=4)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert 'step 4' in err and ('checksum' in err or 'unreadable' in err)

  # Training sets it aside (kept), falls back to step 2 and trains on.
  runner.run(_config(num_train_steps=6), workdir)
  assert helpers.checkpoint_steps(workdir) == [2, 4, 6]
  assert [n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
          if n.startswith('4.unreadable')]


def test_second_run_on_a_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  # Long enough to be running when the second one starts (a tiny step takes
  # milliseconds); stopped with SIGTERM once the second one was refused.
  first = subprocess.Popen(
      helpers.main_cmd(workdir, '--config.num_train_steps=1000000',
                       '--config.checkpoint_every_steps=10'),
      cwd=helpers.ROOT, env=helpers.env(), stderr=subprocess.PIPE, text=True)
  lock = os.path.join(workdir, 'lock.json')
  deadline = time.time() + 240
  while not os.path.exists(lock):
    assert first.poll() is None and time.time() < deadline
    time.sleep(0.2)
  second = helpers.run_main(workdir, '--config.num_train_steps=1000000',
                            '--config.checkpoint_every_steps=10', check=False)
  assert second.returncode == 2, second.stderr[-3000:]
  assert 'in use by another run' in second.stderr
  assert f'pid {first.pid}' in second.stderr
  assert first.poll() is None  # The first run was not disturbed.
  first.send_signal(signal.SIGTERM)
  err = first.communicate(timeout=300)[1]
  assert first.returncode == 0, err[-3000:]
  saved = helpers.checkpoint_steps(workdir)[-1]
  assert f'saved checkpoint {saved}' in err and not os.path.exists(lock)


def test_a_dead_runs_lock_is_taken_over(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  dead = subprocess.Popen(['true'])
  dead.wait()
  (workdir / 'lock.json').write_text(json.dumps(
      {'host': os.uname().nodename, 'pid': dead.pid, 'started': 'earlier'}))
  proc = helpers.run_main(str(workdir), '--config.num_train_steps=2')
  assert 'Taking over the lock' in proc.stderr


def test_changed_hyperparameters_need_a_flag(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  runner.run(_config(num_train_steps=2), workdir)
  with pytest.raises(SystemExit) as e:
    runner.run(_config(num_train_steps=4, learning_rate=0.05), workdir)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert 'learning_rate' in err and 'allow_hparam_changes' in err
  assert helpers.checkpoint_steps(workdir) == [2]
  runner.run(_config(num_train_steps=4, learning_rate=0.05,
                     allow_hparam_changes=True), workdir)
  assert helpers.checkpoint_steps(workdir) == [2, 4]
  # A longer schedule alone is not a change of hyperparameters.
  runner.run(_config(num_train_steps=6, learning_rate=0.05), workdir)
  assert helpers.checkpoint_steps(workdir)[-1] == 6


def test_disk_full_is_one_clear_message(tmp_path, capsys, monkeypatch):
  workdir = str(tmp_path / 'run')
  real_save = ckpt_lib.save

  def save(manager, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(manager, step, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib, 'save', save)
  with pytest.raises(SystemExit) as e:
    runner.run(_config(), workdir)
  assert e.value.code == 4
  err = capsys.readouterr().err
  assert 'step 4' in err and 'disk is full' in err and 'free space' in err
  assert 'latest is step 2' in err and err.count('\n') <= 2
  assert helpers.checkpoint_steps(workdir) == [2]
  monkeypatch.setattr(ckpt_lib, 'save', real_save)
  runner.run(_config(), workdir)  # After freeing space: resumes.
  assert helpers.checkpoint_steps(workdir) == [2, 4]


def test_nonfinite_with_saves_every_step_names_a_saved_step(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  with pytest.raises(SystemExit) as e:
    runner.run(_config(learning_rate=1e30, checkpoint_every_steps=1,
                       log_every_steps=1), workdir)
  assert e.value.code == 3
  err = capsys.readouterr().err
  if 'latest checkpoint (step' in err:
    named = int(err.split('latest checkpoint (step ')[1].split(')')[0])
    assert named in helpers.checkpoint_steps(workdir)  # Committed, not abandoned.
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
              if 'tmp' in n]


def test_a_failing_evaluation_saves_the_training_state_first(
    tmp_path, monkeypatch, capsys):
  from jaxres.data import errors  # pylint: disable=g-import-not-at-top
  from jaxres.tasks import classification  # pylint: disable=g-import-not-at-top

  def bad_eval(*args, **kwargs):
    raise errors.BadImageError('val/bad.jpg cannot be decoded.')

  monkeypatch.setattr(classification.Classification, 'evaluate', bad_eval)
  workdir = str(tmp_path / 'run')
  with pytest.raises(SystemExit) as e:
    runner.run(_config(eval_every_steps=3, checkpoint_every_steps=100),
               workdir)
  assert e.value.code == 2 and 'bad.jpg' in capsys.readouterr().err
  assert helpers.checkpoint_steps(workdir) == [3]  # Training up to the eval is kept.


def test_a_refused_restore_does_not_claim_the_workdir(tmp_path):
  workdir = str(tmp_path / 'run')
  runner.run(_config(num_train_steps=2), workdir)
  os.remove(os.path.join(workdir, 'experiment.json'))
  with pytest.raises(SystemExit):  # Another width: does not fit.
    c = _config(num_train_steps=4)
    c.unlock()
    c.model_kwargs.width = 16
    runner.run(c, workdir)
  assert not os.path.exists(os.path.join(workdir, 'experiment.json'))
  runner.run(_config(num_train_steps=4), workdir)  # Its own config still fits.
  assert helpers.checkpoint_steps(workdir)[-1] == 4


@pytest.mark.parametrize('field, value', [
    ('max_checkpoints_to_keep', 0), ('checkpoint_every_steps', 0),
    ('num_train_steps', -1), ('eval_every_steps', 0)])
def test_harmful_values_are_refused_before_anything_is_written(
    tmp_path, capsys, field, value):
  with pytest.raises(SystemExit) as e:
    runner.run(_config(**{field: value}), str(tmp_path / 'w'))
  assert e.value.code == 2
  assert f'{field}={value}' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'w')


def test_checksum_cost_is_linear_and_small():
  """Not a timing test: the checksum reads each byte once (CRC-32)."""
  state = {'a': np.arange(1000, dtype=np.float32), 'b': np.ones((3, 3))}
  sums = ckpt_lib.checksums(state)
  assert set(sums) == {'a', 'b'}
  state['a'][500] += 1
  assert ckpt_lib.checksums(state)['a'] != sums['a']
