"""Two processes on 127.0.0.1 (jax.distributed, 2 CPU devices each)."""
import socket
import subprocess

import jax
import numpy as np

from tests import helpers

ARGS = ('--config.batch_size=32', '--config.num_train_steps=4',
        '--config.checkpoint_every_steps=2')


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


def _assert_close(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_two_processes_match_one_and_resume(tmp_path):
  single = str(tmp_path / 'single')
  helpers.run_main(single, *ARGS, devices=4)
  multi = str(tmp_path / 'multi')
  errs = _run_two_processes(multi)
  # Logging comes from process 0 only.
  assert 'step 4/4' in errs[0] and 'step 4/4' not in errs[1]
  _assert_close(helpers.load_state(multi, 4)['params'],
                helpers.load_state(single, 4)['params'])
  _assert_close(helpers.load_state(multi, 4)['batch_stats'],
                helpers.load_state(single, 4)['batch_stats'])
  # Restore across processes: continue to step 6 without hanging.
  errs = _run_two_processes(multi, '--config.num_train_steps=6')
  assert 'Restored checkpoint step 4' in errs[0]
  assert np.isfinite(helpers.load_state(multi, 6)['params']['fc']['kernel']).all()
