"""host_memory: XLA:CPU's large step buffers are reused, not mapped anew."""
import os
import subprocess
import sys

import pytest

from tests import helpers

# A program whose temporary buffer (the 4096 x 4096 float32 product, 64 MiB)
# is larger than any block glibc serves from a thread arena without mmap.
_PROBE = """
import resource
from jaxres import host_memory
print(host_memory.keep_step_buffers_mapped())
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.tanh(jnp.tanh(x @ x.T) @ x))
x = jnp.ones((4096, 8), jnp.float32)
for _ in range(10):
  f(x).block_until_ready()
for _ in range(6):  # Page faults per call, in windows of 10 calls.
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(10):
    f(x).block_until_ready()
  print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10)
"""


def _faults_per_call(malloc):
  env = dict(helpers.env(), JAXRES_MALLOC=malloc)
  proc = subprocess.run([sys.executable, '-c', _PROBE], cwd=helpers.ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  done, *windows = proc.stdout.split()
  return done, [float(w) for w in windows]


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='glibc malloc settings: Linux only')
def test_step_buffers_stay_mapped():
  done, kept = _faults_per_call('keep')
  assert done == 'keep'
  default_done, default = _faults_per_call('default')
  assert default_done == 'default'
  # glibc's defaults map the 64 MiB block anew each call: 16,384 pages
  # zeroed by the kernel, every call. Kept, once the heap has reached its
  # high-water mark (a few calls) the block is reused: no page faults.
  assert min(default) > 8000, default
  assert min(kept) < 100, kept


def test_bad_setting_is_a_clear_error(tmp_path):
  workdir = tmp_path / 'run'
  env = dict(helpers.env(), JAXRES_MALLOC='tcmalloc')
  proc = subprocess.run(helpers.main_cmd(str(workdir)), cwd=helpers.ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "JAXRES_MALLOC='tcmalloc'" in proc.stderr
  assert "'keep'" in proc.stderr and "'default'" in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(workdir)
