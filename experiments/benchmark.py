r"""Training step throughput of a jaxres model, side by side with PyTorch.

For one model, batch size, image size and precision this measures, in one run:
  - jaxres: trace+lower time and XLA compile time of the train step (persistent
    compilation cache OFF, i.e. cold), the first step, steady-state training
    and eval images/s (median of timed windows after warm-up, synchronised
    with block_until_ready), peak device memory, XLA cost-analysis FLOPs per
    step and model FLOPs utilisation against --peak_tflops;
  - the same training step in PyTorch (same architecture from
    tests/torch_reference.py, same batch, SGD nesterov + weight decay on
    kernels, label-smoothed cross-entropy; channels_last + bf16 autocast on
    GPU; eager, or torch.compile with --torch=compile);
and prints the jaxres / PyTorch ratio. jax and PyTorch windows alternate, so
load from other processes hits both sides alike.

The jaxres side is the trainer's own code: models.build_model, optim,
train_state.create_train_state and tasks.classification.train_step
(segmentation: tasks.segmentation.train_step with the 'ce' loss), jitted with the trainer's shardings
and donate_argnums=(0,), on a synthetic batch already on the device.

Training runs keep compiled steps in the persistent compilation cache
(jaxres.runner.enable_compilation_cache, on by default). This benchmark turns
the cache OFF to report the cold compile; --cache_check then also compiles
into an empty cache and once more from it (what a second launch pays).

Needs jax, flax, optax, orbax, numpy, torch; not TensorFlow, clu or
ml_collections (stand-ins are installed when those two are missing).

Examples:
  # CPU row of BENCHMARKS.md (about 4 minutes on 2 shared cores):
  python experiments/benchmark.py --model=resnet50 --batch_size=8 \
      --image_size=224 --dtype=float32 --cpu_threads=1 --warmup=1 \
      --windows=5 --steps=1 --eval_windows=3 --cache_check
  # GPU: experiments/run_gpu_table.sh (ResNet-50 bf16 batch 256 first).
  python experiments/benchmark.py --model=resnet50 --batch_size=256 \
      --dtype=bfloat16 --peak_tflops=790 --json=/tmp/r50.json
  # Table from saved results:
  python experiments/benchmark.py --table experiments/results/*.json
"""
import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
# As `jaxres.main` does, before any library starts a thread: large step
# buffers are reused, not mapped anew each step (jaxres/host_memory.py). It
# is process-wide, so the PyTorch side runs with the same malloc settings.
from jaxres import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position
HOST_MALLOC = host_memory.keep_step_buffers_mapped()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

# model -> (task, default image size, classes).
MODELS = {
    'resnet18': ('classification', 224, 1000),
    'resnet50': ('classification', 224, 1000),
    'resnet101': ('classification', 224, 1000),
    'mobilenet_v2': ('classification', 224, 1000),
    'deeplabv3plus_mobilenet_v2': ('segmentation', 512, 21),
    'unet_resnet50': ('segmentation', 512, 21),
}
IGNORE_LABEL = 255
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 1e-4
MOMENTUM = 0.9
BASE_LR = 0.1


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='resnet50', choices=sorted(MODELS))
  p.add_argument('--batch_size', type=int, default=256, help='global batch')
  p.add_argument('--image_size', type=int, default=None,
                 help='square side; default 224 (classification), 512 (seg)')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help='compute dtype; params stay float32 (PyTorch: autocast)')
  p.add_argument('--input_dtype', default=None,
                 help='dtype of the jaxres input batch (default: --dtype, as '
                 "config.input_dtype='bfloat16' in training)")
  p.add_argument('--model_kwargs', default='{}',
                 help='JSON dict for build_model, e.g. {"width_mult": 0.25}')
  p.add_argument('--num_classes', type=int, default=None)
  p.add_argument('--warmup', type=int, default=3,
                 help='untimed steps after the first one')
  p.add_argument('--windows', type=int, default=5, help='timed windows')
  p.add_argument('--steps', type=int, default=10, help='steps per window')
  p.add_argument('--eval_windows', type=int, default=3)
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='peak FLOP/s of ONE device in TFLOP/s (for MFU)')
  p.add_argument('--torch', default='eager',
                 choices=('eager', 'compile', 'none'),
                 help='PyTorch side: eager, torch.compile, or not run')
  p.add_argument('--num_devices', type=int, default=None,
                 help='use the first N devices (default: all)')
  p.add_argument('--cpu_threads', type=int, default=None,
                 help='CPU only: threads for XLA (CPU affinity while its '
                 'backend starts) and PyTorch (torch.set_num_threads); works '
                 'with XLA_FLAGS unset')
  p.add_argument('--torch_channels_last', default='auto',
                 choices=('auto', 'true', 'false'),
                 help='auto: channels_last on GPU only')
  p.add_argument('--cache_check', action='store_true',
                 help='also time a compile into an empty persistent cache and '
                 'one served from it')
  p.add_argument('--json', default=None, help='write the result here')
  p.add_argument('--table', nargs='+', default=None, metavar='JSON',
                 help='only print the table of these saved results')
  p.add_argument('--table_format', default='gpu', choices=('gpu', 'cpu'),
                 help='with --table: the GPU table, or the CPU table of '
                 'BENCHMARKS.md (threads, load average, CPU-second rates)')
  args = p.parse_args(argv)
  if args.image_size is None:
    args.image_size = MODELS[args.model][1]
  if args.num_classes is None:
    args.num_classes = MODELS[args.model][2]
  args.input_dtype = args.input_dtype or args.dtype
  args.model_kwargs = json.loads(args.model_kwargs)
  return args


# ---------------------------------------------------------------------------
# Imports of the trainers without clu / ml_collections.
# ---------------------------------------------------------------------------

class _Missing:
  """Stands in for an attribute of a package that is not installed."""

  def __init__(self, name):
    self._name = name

  def __getattr__(self, attr):
    return _missing_attr(self._name, attr)

  def __call__(self, *args, **kwargs):
    raise ModuleNotFoundError(
        f'{self._name} is not installed; the benchmark only uses the train '
        'and eval steps, which do not need it.')


def _missing_attr(owner, attr):
  if attr.startswith('_'):  # __file__, __path__: inspect must find none.
    raise AttributeError(attr)
  return _Missing(f'{owner}.{attr}')


def _stub_missing_modules(names=('clu', 'ml_collections')):
  """jaxres.train imports clu and ml_collections at module level for its loop
  (metric writers, the config type); the steps need neither. The GPU image has
  neither, so stand-ins are put in sys.modules. Returns the names stubbed."""
  stubbed = []
  for name in names:
    if name in sys.modules or importlib.util.find_spec(name) is not None:
      continue
    module = types.ModuleType(name)
    module.__getattr__ = functools.partial(_missing_attr, name)
    sys.modules[name] = module
    stubbed.append(name)
  return stubbed


def _import_jaxres():
  stubbed = _stub_missing_modules()
  # pylint: disable=g-import-not-at-top
  from jaxres import models, optim, runner, seg_losses, train_state
  from jaxres.data import synthetic
  from jaxres.sharding import DataParallel
  from jaxres.tasks import classification, seg_eval, segmentation
  # pylint: enable=g-import-not-at-top
  return types.SimpleNamespace(
      models=models, optim=optim, runner=runner, seg_losses=seg_losses,
      train_state=train_state, classification=classification,
      segmentation=segmentation, seg_eval=seg_eval, synthetic=synthetic,
      DataParallel=DataParallel, stubbed=stubbed)


class _Config(dict):
  """The few config fields optim reads, without ml_collections."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e


# ---------------------------------------------------------------------------
# Timing helpers.
# ---------------------------------------------------------------------------

def _median_rate(seconds_per_window, images_per_window):
  return images_per_window / statistics.median(seconds_per_window)


def _cpu_seconds():
  t = os.times()
  return t.user + t.system


def _thread_cpu_ticks():
  """CPU clock ticks used so far by each thread of this process (Linux)."""
  ticks = {}
  try:
    tids = os.listdir('/proc/self/task')
  except OSError:
    return ticks
  for tid in tids:
    try:
      with open(f'/proc/self/task/{tid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
      pass
  return ticks


def _busy_threads(before, after, share=0.1):
  """Threads that did at least `share` of the busiest thread's work."""
  used = [after[t] - before.get(t, 0) for t in after]
  top = max(used, default=0)
  return sum(u >= share * top for u in used) if top else None


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def _cost_flops(compiled):
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def _compiled_bytes(compiled):
  """Arguments + outputs + temporaries XLA plans for, minus donated aliases."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes +
               m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


# ---------------------------------------------------------------------------
# jaxres side.
# ---------------------------------------------------------------------------

def _seg_steps(jr, loss_fn, lr_fn, num_classes):
  """The segmentation task's own steps (the 'ce' loss, nothing frozen)."""
  train_fn = functools.partial(
      jr.segmentation.train_step, loss_fn=loss_fn, lr_fn=lr_fn,
      num_classes=num_classes, ignore_label=IGNORE_LABEL,
      frozen_backbone=False, backbone_bn_train=True)
  eval_fn = functools.partial(
      jr.seg_eval.eval_step, num_classes=num_classes,
      ignore_label=IGNORE_LABEL, resize_logits=False)
  return train_fn, eval_fn, 'jaxres.tasks.segmentation'


def setup_jax(args, jr):
  """Builds, compiles and warms up the jaxres steps; returns timing closures."""
  import jax  # pylint: disable=g-import-not-at-top

  task = MODELS[args.model][0]
  seg = task == 'segmentation'
  out = {'stubbed_modules': jr.stubbed}
  # pylint: disable=g-import-not-at-top
  from jaxres.models import batchnorm
  from jaxres.models import layers
  from jaxres.models import pooling
  # jaxres's convolution choices for this platform (JAXRES_*_IMPL).
  out['depthwise_impl'] = layers.depthwise_impl()
  out['pointwise_impl'] = layers.pointwise_impl()
  out['conv_filter_grad_impl'] = layers.conv_filter_grad_impl()
  out['maxpool_impl'] = pooling.maxpool_impl()
  out['batchnorm_impl'] = batchnorm.batchnorm_impl()
  # Cold compile: the persistent cache must not serve this process.
  jax.config.update('jax_enable_compilation_cache', False)

  devices = jax.devices()[:args.num_devices]
  dp = jr.DataParallel.create(args.batch_size, devices=devices)
  config = _Config(optimizer='sgd', momentum=MOMENTUM, nesterov=True,
                   weight_decay=WEIGHT_DECAY, schedule='cosine',
                   grad_clip_norm=None, losses='ce', loss_weights={},
                   class_weights=None, focal_gamma=2.0, focal_alpha=None,
                   dice_smooth=1.0)
  lr_fn = jr.optim.learning_rate_fn(config, BASE_LR, total_steps=100_000,
                                    warmup_steps=500, steps_per_epoch=5000)
  tx = jr.optim.make_optimizer(config, lr_fn)
  dtype = jr.train_state.compute_dtype(_Config(dtype=args.dtype))
  model = jr.models.build_model(args.model, num_classes=args.num_classes,
                                dtype=dtype, **args.model_kwargs)
  input_shape = (args.image_size, args.image_size, 3)
  rng = jax.random.key(0)
  init_rng, step_rng = jax.random.split(rng)
  state = jax.jit(
      functools.partial(jr.train_state.create_train_state, model, tx,
                        input_shape=input_shape),
      out_shardings=dp.replicated)(init_rng)
  out['num_params'] = int(sum(x.size for x in jax.tree.leaves(state.params)))

  if seg:
    loss_fn = jr.seg_losses.make_loss_fn(config, ignore_label=IGNORE_LABEL)
    train_fn, eval_fn, out['step_source'] = _seg_steps(
        jr, loss_fn, lr_fn, args.num_classes)
  else:
    train_fn = functools.partial(
        jr.classification.train_step, lr_fn=lr_fn,
        cfg=jr.classification.StepConfig(num_classes=args.num_classes,
                                         label_smoothing=LABEL_SMOOTHING))
    eval_fn = functools.partial(jr.classification.eval_step,
                                num_classes=args.num_classes)
    out['step_source'] = 'jaxres.tasks.classification'
  p_train_step = jax.jit(
      train_fn, in_shardings=(dp.replicated, dp.batch, dp.replicated),
      out_shardings=(dp.replicated, dp.replicated), donate_argnums=(0,))
  p_eval_step = jax.jit(eval_fn, in_shardings=(dp.replicated, dp.batch))

  # Data already on the device: one synthetic batch, reused every step.
  host_batch = jr.synthetic.synthetic_batch(
      args.batch_size, args.image_size, args.num_classes, seed=0,
      dtype=args.input_dtype, segmentation=seg)
  batch = dp.shard_batch(host_batch)
  eval_batch = dp.shard_batch(
      dict(host_batch, mask=np.ones((args.batch_size,), np.float32)))

  # --- Compile, timed apart from the first run. ---
  lowered, out['lower_s'] = _timed(
      lambda: p_train_step.lower(state, batch, step_rng))
  compiled, out['compile_s'] = _timed(lowered.compile)
  out['flops_per_step'] = _cost_flops(compiled)
  if out['flops_per_step']:
    # Cost analysis is of one device's program.
    out['flops_per_step'] *= dp.mesh.size
  out['xla_planned_bytes'] = _compiled_bytes(compiled)
  if args.cache_check:
    try:
      out.update(_cache_check(jr, p_train_step, (state, batch, step_rng)))
    except Exception as e:  # pylint: disable=broad-except
      # A jax without this cache API must not cost the row's other figures.
      out['cache_check_error'] = repr(e)
      print(f'NOTE: persistent-cache check failed: {e!r}')

  def run_steps(n):
    nonlocal state
    metrics = None
    for _ in range(n):
      state, metrics = compiled(state, batch, step_rng)
    jax.block_until_ready((state, metrics))
    return metrics

  metrics, out['first_step_s'] = _timed(lambda: run_steps(1))
  out['first_loss'] = float(metrics['loss'])
  run_steps(args.warmup)

  eval_compiled, out['eval_compile_s'] = _timed(
      lambda: p_eval_step.lower(state, eval_batch).compile())

  def run_eval(n):
    sums = None
    for _ in range(n):
      sums = eval_compiled(state, eval_batch)
    jax.block_until_ready(sums)

  run_eval(1)

  def finish():
    out['last_loss'] = float(run_steps(1)['loss'])
    stats = devices[0].memory_stats() or {}
    out['peak_memory_bytes'] = stats.get('peak_bytes_in_use')
    return out

  return run_steps, run_eval, finish


def _cache_check(jr, jitted, example_args):
  """Compile into an empty persistent cache, then once more served from it."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  cache_dir = tempfile.mkdtemp(prefix='jaxres_xla_cache_')
  jax.config.update('jax_enable_compilation_cache', True)
  jr.runner.enable_compilation_cache(_Config(compilation_cache_dir=cache_dir))
  cc.reset_cache()  # The first compile decided "no cache" for this process.
  res = {}
  try:
    jax.clear_caches()
    _, res['compile_cache_write_s'] = _timed(
        lambda: jitted.lower(*example_args).compile())
    jax.clear_caches()
    lowered, res['lower_cached_s'] = _timed(lambda: jitted.lower(*example_args))
    _, res['compile_cached_s'] = _timed(lowered.compile)
    res['cache_files'] = sum(len(f) for _, _, f in os.walk(cache_dir))
  finally:
    jax.config.update('jax_enable_compilation_cache', False)
    cc.reset_cache()
    shutil.rmtree(cache_dir, ignore_errors=True)
  return res


# ---------------------------------------------------------------------------
# PyTorch side.
# ---------------------------------------------------------------------------

def build_torch_model(name, num_classes, model_kwargs):
  """The PyTorch reference architecture of jaxres model `name`."""
  tests_dir = os.path.join(REPO, 'tests')
  if tests_dir not in sys.path:
    sys.path.insert(0, tests_dir)
  import torch_reference as R  # pylint: disable=g-import-not-at-top
  kwargs = dict(model_kwargs)
  if name.startswith('resnet'):
    model = R.resnet(name, num_classes=num_classes)
  elif name == 'mobilenet_v2':
    model = R.MobileNetV2(num_classes, width_mult=kwargs.pop('width_mult', 1.0))
  elif name == 'deeplabv3plus_mobilenet_v2':
    model = R.DeepLab(num_classes,
                      downsample_factor=kwargs.pop('output_stride', 16))
  elif name == 'unet_resnet50':
    model = R.Unet(num_classes, backbone='resnet50')
  else:
    raise ValueError(f'No PyTorch reference for {name!r}.')
  if kwargs:
    raise ValueError(
        f'tests/torch_reference.py has no equivalent of {sorted(kwargs)} for '
        f'{name}; run with --torch=none or without those model_kwargs.')
  return model


def setup_torch(args):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  seg = MODELS[args.model][0] == 'segmentation'
  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  channels_last = {'auto': cuda, 'true': True, 'false': False}[
      args.torch_channels_last]
  amp = args.dtype == 'bfloat16'
  memory_format = (torch.channels_last if channels_last
                   else torch.contiguous_format)
  if cuda:
    torch.backends.cudnn.benchmark = True
  elif args.cpu_threads:
    torch.set_num_threads(args.cpu_threads)
  out = {'device': str(device), 'channels_last': channels_last,
         'autocast_bf16': amp, 'mode': args.torch,
         'threads': torch.get_num_threads(), 'version': torch.__version__}

  torch.manual_seed(0)
  model = build_torch_model(args.model, args.num_classes, args.model_kwargs)
  model = model.to(device, memory_format=memory_format).train()
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  opt = torch.optim.SGD([{'params': decay, 'weight_decay': WEIGHT_DECAY},
                         {'params': no_decay, 'weight_decay': 0.0}],
                        lr=BASE_LR, momentum=MOMENTUM, nesterov=True)
  if seg:
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL)
  else:
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
  forward = torch.compile(model) if args.torch == 'compile' else model

  gen = torch.Generator().manual_seed(0)
  size = args.image_size
  x = torch.randn(args.batch_size, 3, size, size, generator=gen)
  x = x.to(device).contiguous(memory_format=memory_format)
  label_shape = (args.batch_size, size, size) if seg else (args.batch_size,)
  y = torch.randint(0, args.num_classes, label_shape, generator=gen)
  if seg:
    y[torch.rand(label_shape, generator=gen) < 0.01] = IGNORE_LABEL
  y = y.to(device)

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
      logits = forward(x)
    loss = loss_fn(logits.float(), y)
    loss.backward()
    opt.step()
    return loss

  def run_steps(n):
    loss = None
    for _ in range(n):
      loss = step()
    sync()
    return loss

  loss, out['first_step_s'] = _timed(lambda: run_steps(1))
  out['first_loss'] = float(loss.detach())
  run_steps(args.warmup)

  def run_eval(n):
    forward.eval()
    with torch.inference_mode(), torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=amp):
      for _ in range(n):
        forward(x)
    sync()
    forward.train()

  run_eval(1)

  def finish():
    if cuda:
      out['peak_memory_bytes'] = torch.cuda.max_memory_allocated()
    return out

  return run_steps, run_eval, finish


# ---------------------------------------------------------------------------
# Main: alternate jax and PyTorch windows, report medians.
# ---------------------------------------------------------------------------

def cpu_description() -> dict:
  """The host CPU's model and vector extensions (/proc/cpuinfo, Linux).

  XLA:CPU compiles for the instruction set it finds, so two machines of the
  name (AMD EPYC) but other vector extensions run different code: their
  speeds differ, and so do float results in the last bits.
  """
  model, flags = platform.processor() or 'unknown', []
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and model in ('unknown', ''):
          model = value.strip()
        elif key.strip() == 'flags':
          flags = value.split()
          break
  except OSError:
    pass
  wanted = ('avx', 'avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni',
            'amx_tile', 'vaes')
  return {'cpu_model': model,
          'cpu_vector_flags': [f for f in wanted if f in flags]}


def _environment(args):
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {
      **cpu_description(),
      'date': datetime.date.today().isoformat(),
      'platform': dev.platform,
      'device_kind': dev.device_kind,
      'device_count': len(jax.devices()[:args.num_devices]),
      'cpu_count': os.cpu_count(),
      'host': platform.node(),
      'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
      'loadavg_start': os.getloadavg()[0],
      'host_malloc': HOST_MALLOC,
  }


def _limit_cpu_threads(threads):
  """Starts XLA:CPU with `threads` intra-op threads; returns what was done.

  XLA:CPU (jaxlib 0.10.2) has no thread-count flag: `intra_op_parallelism_
  threads` is not an XLA flag, and --xla_cpu_multi_thread_eigen=false still
  leaves 2-4 threads computing (checked per thread in /proc). The PJRT CPU
  client sizes its thread pool from the CPU affinity of the process when the
  backend starts (tsl MaxParallelism; jax-ml/jax#1539). So the affinity is
  narrowed to `threads` cores, the backend started, then every thread of the
  process (XLA's pool included) is allowed on all cores again: `threads`
  workers that any free core can run, as torch.set_num_threads gives PyTorch.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  info = {'requested': threads, 'mechanism': 'cpu affinity at backend start'}
  if xla_bridge.backends_are_initialized() or not hasattr(
      os, 'sched_setaffinity'):
    info['applied'] = False
    print('NOTE: --cpu_threads ignored for XLA: its backend already started '
          'in this process, or this OS has no CPU affinity (Linux only).')
    return info
  cores = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, cores[:threads])
  try:
    jax.devices()
  finally:
    for tid in os.listdir('/proc/self/task'):
      try:
        os.sched_setaffinity(int(tid), cores)
      except OSError:  # A thread that ended meanwhile.
        pass
  info['applied'] = True
  info['cores_at_start'] = min(threads, len(cores))
  return info


def run_benchmark(args):
  threads = _limit_cpu_threads(args.cpu_threads) if args.cpu_threads else None
  jr = _import_jaxres()
  result = {'model': args.model, 'task': MODELS[args.model][0],
            'batch_size': args.batch_size, 'image_size': args.image_size,
            'dtype': args.dtype, 'input_dtype': args.input_dtype,
            'model_kwargs': args.model_kwargs, 'windows': args.windows,
            'steps_per_window': args.steps, 'env': _environment(args)}
  result['env']['xla_cpu_threads'] = threads
  sides = {'jax': setup_jax(args, jr)}
  if args.torch != 'none':
    sides['torch'] = setup_torch(args)

  def windows(kind, count):
    """Alternates jax and PyTorch windows; wall and process CPU seconds."""
    wall = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    for _ in range(count):
      for name, fns in sides.items():
        c0, t0 = _cpu_seconds(), _thread_cpu_ticks()
        _, seconds = _timed(lambda f=fns[kind]: f(args.steps))
        wall[name].append(seconds)
        cpu[name].append(_cpu_seconds() - c0)
        busy_threads.setdefault((name, kind), []).append(
            _busy_threads(t0, _thread_cpu_ticks()))
    return wall, cpu

  busy_threads = {}

  train_wall, train_cpu = windows(0, args.windows)
  eval_wall, eval_cpu = windows(1, args.eval_windows)

  images = args.batch_size * args.steps
  for name, (_, _, finish) in sides.items():
    side = finish()
    side['train_window_s'] = train_wall[name]
    side['train_window_cpu_s'] = train_cpu[name]
    # How many threads computed (checks --cpu_threads took effect).
    side['train_busy_threads'] = busy_threads.get((name, 0))
    side['eval_window_s'] = eval_wall[name]
    side['train_images_per_s'] = _median_rate(train_wall[name], images)
    side['eval_images_per_s'] = _median_rate(eval_wall[name], images)
    # On a shared CPU host, images per CPU-second of this process moves less
    # with other processes' load than wall-clock rates do.
    side['train_images_per_cpu_s'] = _median_rate(train_cpu[name], images)
    side['step_time_s'] = statistics.median(train_wall[name]) / args.steps
    result[name] = side

  jx = result['jax']
  if jx.get('flops_per_step'):
    jx['achieved_tflops'] = jx['flops_per_step'] / jx['step_time_s'] / 1e12
    if args.peak_tflops:
      jx['mfu'] = jx['achieved_tflops'] / (
          args.peak_tflops * result['env']['device_count'])
  jx['peak_tflops_per_device'] = args.peak_tflops
  if 'torch' in result:
    pt = result['torch']
    result['ratio_train'] = jx['train_images_per_s'] / pt['train_images_per_s']
    result['ratio_train_cpu_time'] = (jx['train_images_per_cpu_s'] /
                                      pt['train_images_per_cpu_s'])
    result['ratio_eval'] = (jx['eval_images_per_s'] /
                            result['torch']['eval_images_per_s'])
  result['env']['loadavg_end'] = os.getloadavg()[0]
  return result


def _fmt(value, spec, scale=1.0):
  if value is None:
    return 'n/a'
  return format(value * scale, spec)


def format_table(results):
  header = ('| model | batch | size | dtype | compile s (cold) '
            '| jaxres train img/s | PyTorch train img/s | ratio '
            '| jaxres eval img/s | PyTorch eval img/s | jax peak mem GiB '
            '| XLA plan GiB | TFLOP/s | MFU |')
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for r in results:
    jx, pt = r['jax'], r.get('torch') or {}
    mode = f" ({pt['mode']})" if pt else ''
    lines.append('| ' + ' | '.join([
        r['model'], str(r['batch_size']), str(r['image_size']), r['dtype'],
        _fmt(jx['lower_s'] + jx['compile_s'], '.1f'),
        _fmt(jx['train_images_per_s'], '.1f'),
        _fmt(pt.get('train_images_per_s'), '.1f') + mode,
        _fmt(r.get('ratio_train'), '.2f'),
        _fmt(jx['eval_images_per_s'], '.1f'),
        _fmt(pt.get('eval_images_per_s'), '.1f'),
        _fmt(jx.get('peak_memory_bytes'), '.1f', 2.0**-30),
        _fmt(jx.get('xla_planned_bytes'), '.2f', 2.0**-30),
        _fmt(jx.get('achieved_tflops'), '.3g'),
        _fmt(jx.get('mfu'), '.1%'),
    ]) + ' |')
  return '\n'.join(lines)


def format_cpu_table(results):
  """The CPU table of BENCHMARKS.md: one row per model and thread count."""
  header = ('| model | batch | size | threads | load avg (start-end) '
            '| compile s (lower + XLA) | jaxres train img/s '
            '| PyTorch train img/s | ratio | jaxres img per CPU-s '
            '| PyTorch img per CPU-s | ratio (CPU-s) | jaxres eval img/s '
            '| PyTorch eval img/s | XLA GFLOP per train image |')
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for r in results:
    jx, pt, env = r['jax'], r.get('torch') or {}, r['env']
    threads = (env.get('xla_cpu_threads') or {}).get('requested')
    flops = jx.get('flops_per_step')
    lines.append('| ' + ' | '.join([
        r['model'], str(r['batch_size']), str(r['image_size']),
        str(threads or 'all'),
        f"{env['loadavg_start']:.1f}-{env['loadavg_end']:.1f}",
        f"{jx['lower_s']:.1f} + {jx['compile_s']:.1f}",
        _fmt(jx['train_images_per_s'], '.2f'),
        _fmt(pt.get('train_images_per_s'), '.2f'),
        _fmt(r.get('ratio_train'), '.2f'),
        _fmt(jx.get('train_images_per_cpu_s'), '.2f'),
        _fmt(pt.get('train_images_per_cpu_s'), '.2f'),
        _fmt(r.get('ratio_train_cpu_time'), '.2f'),
        _fmt(jx['eval_images_per_s'], '.1f'),
        _fmt(pt.get('eval_images_per_s'), '.1f'),
        _fmt(flops / r['batch_size'] if flops else None, '.1f', 1e-9),
    ]) + ' |')
  return '\n'.join(lines)


def _summary(r):
  jx = r['jax']
  lines = [
      f"{r['model']} batch {r['batch_size']} at {r['image_size']} "
      f"{r['dtype']} on {r['env']['device_count']}x {r['env']['device_kind']} "
      f"(load {r['env']['loadavg_start']:.1f} -> {r['env']['loadavg_end']:.1f})",
      f"  jaxres step: {jx['step_source']}; params {jx['num_params']:,}",
      f"  compile (persistent cache off): trace+lower {jx['lower_s']:.2f} s, "
      f"XLA compile {jx['compile_s']:.2f} s, first step {jx['first_step_s']:.2f} s",
  ]
  if 'compile_cached_s' in jx:
    lines.append(
        f"  persistent cache: compile into empty cache "
        f"{jx['compile_cache_write_s']:.2f} s, second launch: lower "
        f"{jx['lower_cached_s']:.2f} s + compile {jx['compile_cached_s']:.2f} s")
  lines.append(f"  loss {jx['first_loss']:.3f} -> {jx['last_loss']:.3f}; "
               f"train windows (s): "
               + ', '.join(f'{s:.3f}' for s in jx['train_window_s']))
  threads = r['env'].get('xla_cpu_threads')
  if threads:
    lines.append(
        f"  threads: requested {threads['requested']}, XLA "
        f"{'applied' if threads['applied'] else 'NOT applied'}; busy threads "
        f"per train window: jaxres {jx.get('train_busy_threads')}, PyTorch "
        f"{(r.get('torch') or {}).get('train_busy_threads')}")
  if 'torch' in r:
    pt = r['torch']
    lines.append(f"  PyTorch {pt['version']} {pt['mode']} on {pt['device']}, "
                 f"channels_last={pt['channels_last']}, bf16 autocast="
                 f"{pt['autocast_bf16']}; first step {pt['first_step_s']:.2f} s; "
                 'train windows (s): '
                 + ', '.join(f'{s:.3f}' for s in pt['train_window_s']))
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.table:
    results = []
    for path in args.table:  # One result, or a list of them.
      with open(path) as f:
        loaded = json.load(f)
      loaded = loaded if isinstance(loaded, list) else [loaded]
      results.extend(r for r in loaded if 'jax' in r)  # Skip other JSON.
    print(format_cpu_table(results) if args.table_format == 'cpu'
          else format_table(results))
    return results
  result = run_benchmark(args)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  print(_summary(result))
  print()
  print(format_table([result]))
  return result


if __name__ == '__main__':
  main()
