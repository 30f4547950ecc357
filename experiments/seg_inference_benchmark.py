r"""Segmentation inference modes on one large image: speed and peak memory.

For one model and image size (default DeepLabV3+ MobileNetV2, 19 classes,
1024x2048, float32, batch 1: a Cityscapes image), in one run:
  - each mode of jaxres.seg_inference: whole image; slide (512 windows, stride
    341, --slide_batch windows per step); multi-scale 0.5..1.75 + flip (whole
    image at each scale). Each is jitted as predict runs it (logits, then
    argmax), compiled once (timed apart), then run --repeats times: images/s
    is 1 / the median run time (block_until_ready).
  - peak memory: XLA's own figure for the compiled executable
    (`compiled.memory_analysis()`: arguments + outputs + temporaries, the
    buffers XLA allocates; the weights are the arguments) and, as a coarse
    cross-check, the process's max RSS after the mode ran (getrusage; it only
    grows, so the modes run in increasing memory order and the RSS figure of
    a mode includes everything before it).
  - slide's memory bound: the temporaries of the slide executable compiled at
    --bound_batches windows per step (not run), to show that they follow the
    windows per step, not the image size.
  - PyTorch whole-image inference of the same architecture
    (tests/torch_reference.py DeepLab, eval mode, torch.no_grad, float32,
    --threads threads), for the jaxres / PyTorch ratio.
Weights are random (speed and memory do not depend on them).

Command (CPU; 2 shared cores: see BENCHMARKS.md for the time it took):
  python experiments/seg_inference_benchmark.py \
      --json=experiments/results/cpu_seg_inference.json
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='deeplabv3plus_mobilenet_v2')
  p.add_argument('--num_classes', type=int, default=19)
  p.add_argument('--height', type=int, default=1024)
  p.add_argument('--width', type=int, default=2048)
  p.add_argument('--crop', type=int, default=512)
  p.add_argument('--stride', type=int, default=341)
  p.add_argument('--slide_batch', type=int, default=8)
  p.add_argument('--bound_batches', default='1,2,8',
                 help='Windows per step whose slide memory is compiled.')
  p.add_argument('--modes', default='whole,slide,multiscale_flip')
  p.add_argument('--repeats', type=int, default=2,
                 help='Timed runs per mode (multi-scale: 1).')
  p.add_argument('--threads', type=int, default=2, help='PyTorch threads.')
  p.add_argument('--torch', choices=('eager', 'none'), default='eager')
  p.add_argument('--json', default=None)
  return p.parse_args()


def _max_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _modes(args, seg_inference):
  slide = dict(mode='slide', crop=(args.crop,) * 2, stride=(args.stride,) * 2,
               batch=args.slide_batch)
  return {
      'whole': seg_inference.InferenceMode(),
      'slide': seg_inference.InferenceMode(**slide),
      'multiscale_flip': seg_inference.InferenceMode(scales=SCALES, flip=True),
  }


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  out = {k: int(getattr(m, f'{k}_size_in_bytes', 0) or 0)
         for k in ('argument', 'output', 'temp', 'generated_code')}
  out['peak_mib'] = (out['argument'] + out['output'] + out['temp']) / 2**20
  return out


def run_jax(args, save=lambda partial: None):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxres import models  # pylint: disable=g-import-not-at-top
  from jaxres import seg_inference  # pylint: disable=g-import-not-at-top

  model = models.build_model(args.model, num_classes=args.num_classes)
  abstract = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0),
                          'dropout': jax.random.key(0)},
                         jnp.zeros((1, 64, 64, 3)), train=False))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, s.dtype) if 'var' in str(path[-1])
                       else 0.05 * rng.standard_normal(s.shape).astype(
                           s.dtype)), abstract)
  variables = jax.device_put(variables)
  image = jax.device_put(
      rng.standard_normal((1, args.height, args.width, 3)).astype(np.float32))

  def predict_fn(mode):
    def fn(variables, images):
      apply = lambda x: model.apply(variables, x, train=False)
      return jnp.argmax(seg_inference.logits(apply, images, mode), -1).astype(
          jnp.uint8)
    return jax.jit(fn)

  results = {}
  modes = _modes(args, seg_inference)
  for name in args.modes.split(','):
    mode = modes[name]
    start = time.perf_counter()
    compiled = predict_fn(mode).lower(variables, image).compile()
    compile_s = time.perf_counter() - start
    repeats = 1 if mode.averages_probabilities else args.repeats
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      compiled(variables, image).block_until_ready()
      times.append(time.perf_counter() - start)
    median = statistics.median(times)
    results[name] = {
        'mode': mode.describe(), 'compile_s': compile_s, 'run_s': times,
        'images_per_s': 1 / median, 'xla_memory': _memory(compiled),
        'max_rss_mib_after': _max_rss_mib(),
        'loadavg': os.getloadavg()[0]}
    print(f'{name:16s} {1 / median:7.3f} img/s  ({median:.2f} s/img, '
          f'compile {compile_s:.1f} s)  XLA peak '
          f'{results[name]["xla_memory"].get("peak_mib", float("nan")):.0f} '
          f'MiB  max RSS {results[name]["max_rss_mib_after"]:.0f} MiB  '
          f'load {results[name]["loadavg"]:.1f}', flush=True)
    save(results)  # A long run that is stopped keeps what it measured.
  bound = {}
  for k in (int(v) for v in args.bound_batches.split(',') if v):
    mode = _modes(args, seg_inference)['slide']
    mode = seg_inference.InferenceMode('slide', mode.crop, mode.stride, k)
    memory = _memory(predict_fn(mode).lower(variables, image).compile())
    bound[k] = memory
    print(f'slide, {k} windows/step: XLA temporaries '
          f'{memory.get("temp", 0) / 2**20:.0f} MiB', flush=True)
  return results, bound


def run_torch(args):
  import torch  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'torch_reference', os.path.join(REPO, 'tests', 'torch_reference.py'))
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  torch.set_num_threads(args.threads)
  net = ref.DeepLab(num_classes=args.num_classes).eval()
  x = torch.randn(1, 3, args.height, args.width)
  times = []
  with torch.no_grad():
    net(x).argmax(1)  # Warm-up.
    for _ in range(args.repeats):
      start = time.perf_counter()
      net(x).argmax(1)
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  out = {'run_s': times, 'images_per_s': 1 / median,
         'max_rss_mib_after': _max_rss_mib(), 'loadavg': os.getloadavg()[0],
         'torch': torch.__version__, 'threads': args.threads}
  print(f'PyTorch whole    {1 / median:7.3f} img/s  ({median:.2f} s/img)  '
        f'max RSS {out["max_rss_mib_after"]:.0f} MiB  load '
        f'{out["loadavg"]:.1f}', flush=True)
  return out


def main():
  args = _parse()
  import jax  # pylint: disable=g-import-not-at-top
  result = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'args': vars(args),
      'env': {'platform': platform.platform(), 'cpus': os.cpu_count(),
              'jax': jax.__version__, 'device': str(jax.devices()[0]),
              'loadavg_start': list(os.getloadavg())},
  }
  def save(partial=None):
    if partial is not None:
      result['jax'] = partial
    if args.json:
      os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
      with open(args.json, 'w') as f:
        json.dump(result, f, indent=2)

  result['jax'], result['slide_memory_by_windows_per_step'] = run_jax(
      args, save)
  if args.torch != 'none':
    result['torch_whole'] = run_torch(args)
    ratio = (result['jax']['whole']['images_per_s'] /
             result['torch_whole']['images_per_s'])
    result['whole_ratio_jax_over_torch'] = ratio
    print(f'whole image, jaxres / PyTorch: {ratio:.2f}x')
  result['env']['loadavg_end'] = list(os.getloadavg())
  save()
  if args.json:
    print(f'Wrote {args.json}')


if __name__ == '__main__':
  main()
