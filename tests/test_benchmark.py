"""Smoke test of experiments/benchmark.py: a tiny run of both sides, no timings."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip('torch')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmark', os.path.join(REPO, 'experiments', 'benchmark.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_benchmark_runs_jax_and_torch(tmp_path, capsys):
  benchmark = _load_benchmark()
  out = tmp_path / 'r.json'
  # Full-width ResNet-18 (the PyTorch reference has no width knob) at 32x32:
  # compiling costs the same as a tiny width, and each step stays cheap.
  result = benchmark.main([
      '--model=resnet18', '--batch_size=2', '--image_size=32',
      '--num_devices=1', '--cpu_threads=1', '--warmup=0', '--windows=2',
      '--steps=1', '--eval_windows=1', '--peak_tflops=1', f'--json={out}'])

  jx, pt = result['jax'], result['torch']
  assert jx['step_source'] == 'jaxres.tasks.classification'
  for key in ('lower_s', 'compile_s', 'first_step_s', 'train_images_per_s',
              'eval_images_per_s', 'flops_per_step', 'achieved_tflops', 'mfu',
              'first_loss', 'last_loss'):
    assert _positive(jx[key]), (key, jx[key])
  assert len(jx['train_window_s']) == 2
  for key in ('first_step_s', 'train_images_per_s', 'eval_images_per_s',
              'first_loss'):
    assert _positive(pt[key]), (key, pt[key])
  assert _positive(result['ratio_train']) and _positive(result['ratio_eval'])
  # A ResNet-18 training step at 32x32 is about 3 x 37 MFLOPs per image.
  assert 1e7 < jx['flops_per_step'] / 2 < 1e9

  saved = json.loads(out.read_text())
  assert saved['model'] == 'resnet18' and saved['jax']['compile_s'] > 0
  # The CPU's vector extensions decide XLA:CPU's code: every row names them.
  with open('/proc/cpuinfo') as f:
    has_avx2 = ' avx2' in f.read()
  assert ('avx2' in saved['env']['cpu_vector_flags']) == has_avx2
  assert saved['env']['cpu_model']
  printed = capsys.readouterr().out
  assert '| resnet18 | 2 | 32 | float32 |' in printed

  # The table mode reads saved results back, in either layout.
  benchmark.main(['--table', str(out)])
  assert '| resnet18 |' in capsys.readouterr().out
  benchmark.main(['--table', str(out), '--table_format=cpu'])
  assert '| resnet18 | 2 | 32 | 1 |' in capsys.readouterr().out


_THREADS_SCRIPT = """
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location('benchmark', sys.argv[1])
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)
info = benchmark._limit_cpu_threads(1)
import jax, jax.numpy as jnp
f = jax.jit(lambda a: (a @ a).sum())
a = jnp.ones((768, 768))
f(a).block_until_ready()
before = benchmark._thread_cpu_ticks()
for _ in range(40):
  f(a).block_until_ready()
busy = benchmark._busy_threads(before, benchmark._thread_cpu_ticks())
print(json.dumps(dict(info, busy=busy, xla_flags=os.environ.get('XLA_FLAGS'),
                      affinity=len(os.sched_getaffinity(0)))))
"""


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity'),
                    reason='needs Linux CPU affinity')
def test_cpu_threads_with_xla_flags_unset():
  """--cpu_threads=1 starts XLA with one compute thread and no XLA flag (it
  used to abort: a bare token in XLA_FLAGS), and gives the cores back."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run(
      [sys.executable, '-c', _THREADS_SCRIPT,
       os.path.join(REPO, 'experiments', 'benchmark.py')],
      env=env, capture_output=True, text=True, timeout=120, check=True)
  info = json.loads(out.stdout.strip().splitlines()[-1])
  assert info['applied'] and info['xla_flags'] is None
  assert info['affinity'] == len(os.sched_getaffinity(0))
  assert info['busy'] == 1, info


def test_stub_only_for_missing_modules():
  benchmark = _load_benchmark()
  stub = benchmark._stub_missing_modules  # pylint: disable=protected-access
  assert stub(('json',)) == []
  name = 'jaxres_benchmark_surely_missing_pkg'
  try:
    assert stub((name,)) == [name]
    module = importlib.import_module(name)
    assert not hasattr(module, '__file__')  # inspect (torch imports) must cope.
    with pytest.raises(ModuleNotFoundError, match='not installed'):
      module.metric_writers.create_default_writer('/tmp')
  finally:
    sys.modules.pop(name, None)
