"""Shared test set-up: 8 CPU devices for sharding tests, quiet TensorFlow."""
import os
import sys
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# Tiny test models: XLA's backend optimisations cost more compile time than
# they save at run time.
if 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent XLA cache for the test runs (subprocesses and both xdist
# workers): the tiny models compile identically in dozens of runs. The key
# covers the program, the flags and the jax version, so a stale entry is never
# used; JAXRES_TEST_XLA_CACHE= (empty) turns it off.
os.environ.setdefault('JAXRES_TEST_XLA_CACHE', os.path.join(
    tempfile.gettempdir(), f'jaxres-test-xla-cache-{os.getuid()}'))
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


class TinyRun:
  """A finished `python -m jaxres.main` run of tests/tiny_config.py (8 steps,
  checkpoints 2, 4, 6, 8), made once per test session: `stderr` is its
  console; `copy(dest)` gives a test its own workdir to change."""

  def __init__(self, workdir, stderr):
    self.workdir = workdir
    self.stderr = stderr

  def copy(self, dest) -> str:
    dest = str(dest)
    shutil.copytree(self.workdir, dest, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """The default tiny run, made once per test session: pytest-xdist workers
  share it (a file lock in the session's folder). Read it, never change it:
  a test that changes a run works on `copy()`. It cost a subprocess start and
  an 8-step run (~11 CPU-s) in each test that made its own."""
  import fcntl  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # The session's folder, above each worker's.
  workdir = root / 'tiny_run'
  with open(root / 'tiny_run.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / 'tiny_run.done').exists():
      proc = helpers.run_main(str(workdir))
      (root / 'tiny_run.stderr').write_text(proc.stderr)
      (root / 'tiny_run.done').touch()
  return TinyRun(str(workdir), (root / 'tiny_run.stderr').read_text())
