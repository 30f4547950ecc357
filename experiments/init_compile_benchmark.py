r"""Compile time of a fresh run's initial state at XLA:CPU optimisation levels.

The trainer computes the initial TrainState (parameter initializers and the
optimizer's zero state) in one jitted function that runs once. On CPU its
compile time was the largest item of the quickstart's start-up; jaxres
compiles it at level 1 (jaxres.train_state.init_compiler_options). This
measures, per model in one process: CPU seconds of XLA compile at the
default level and at levels 1 and 0, and how far the initial values move
(units in the last place, share of values that differ).

  python experiments/init_compile_benchmark.py \
      --json=experiments/results/cpu_init_compile.json
"""
import argparse
import functools
import json
import os
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxres import models, train_state  # pylint: disable=g-import-not-at-top,wrong-import-position

# name: (model, kwargs, image size): the quickstarts' models and two full ones.
ROWS = {
    'quickstart_resnet18_w8':
        ('resnet18', dict(num_classes=10, width=8, stem='cifar',
                          output_stride=32), 32),
    'seg_quickstart_unet_resnet18_w16':
        ('unet_resnet18', dict(num_classes=6, backbone_width=16,
                               decoder_filters=(16, 32, 64, 64)), 32),
    'resnet50': ('resnet50', dict(num_classes=1000), 224),
    'mobilenet_v2': ('mobilenet_v2', dict(num_classes=1000), 224),
}
LEVELS = (None, 1, 0)  # None: XLA's default.


def _ulps(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32))
  return np.abs(a - b) / spacing


def measure(name, model_name, kwargs, size):
  model = models.build_model(model_name, **kwargs)
  init = jax.jit(functools.partial(
      train_state.create_train_state, model,
      optax.sgd(0.1, momentum=0.9, nesterov=True), input_shape=(size, size, 3)))
  rng = jax.random.key(0)
  row, reference = {'model': name, 'loadavg_start': os.getloadavg()[0]}, None
  for level in LEVELS:
    options = {} if level is None else {'xla_backend_optimization_level': level}
    lowered = init.lower(rng)
    cpu, wall = time.process_time(), time.time()
    compiled = lowered.compile(compiler_options=options)
    key = 'default' if level is None else f'level_{level}'
    row[f'{key}_compile_cpu_s'] = time.process_time() - cpu
    row[f'{key}_compile_wall_s'] = time.time() - wall
    leaves = [np.asarray(x) for x in jax.tree.leaves(compiled(rng))]
    if reference is None:
      reference = leaves
      row['values'] = int(sum(x.size for x in leaves))
      continue
    floats = [(a, b) for a, b in zip(reference, leaves) if a.dtype.kind == 'f']
    row[f'{key}_max_ulps'] = float(max(np.max(_ulps(a, b)) for a, b in floats))
    row[f'{key}_share_differing'] = float(
        sum(np.sum(a != b) for a, b in floats) / row['values'])
  row['loadavg_end'] = os.getloadavg()[0]
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', default=','.join(ROWS),
                      help='comma-separated row names (default: all)')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  jax.config.update('jax_enable_compilation_cache', False)
  env = dict(benchmark.cpu_description(), date=time.strftime('%Y-%m-%d'),
             jax=jax.__version__, xla_flags=os.environ.get('XLA_FLAGS', ''))
  rows = []
  for name in args.rows.split(','):
    rows.append(measure(name, *ROWS[name]))
    r = rows[-1]
    print(f"| {name} | {r['values']:,} | {r['default_compile_cpu_s']:.1f} | "
          f"{r['level_1_compile_cpu_s']:.1f} | {r['level_0_compile_cpu_s']:.1f}"
          f" | {r['default_compile_cpu_s'] / r['level_1_compile_cpu_s']:.1f}x | "
          f"{r['level_1_max_ulps']:.0f} / {100 * r['level_1_share_differing']:.2f}%"
          f" | {r['level_0_max_ulps']:.0f} / {100 * r['level_0_share_differing']:.2f}%"
          f" | {r['loadavg_start']:.1f}-{r['loadavg_end']:.1f} |", flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'env': env, 'rows': rows}, f, indent=1)
  return rows


if __name__ == '__main__':
  main()
