r"""Images/s of the ImageNet training input pipeline, per CPU core.

Writes generated JPEGs of ImageNet-like size (500x375 and similar, quality 90,
about 100 KB each; real ImageNet train JPEGs average ~110 KB) as TFRecord
shards of tf.train.Example {'image': encoded bytes, 'label': int64}, the
layout TFDS's imagenet2012 files have, then reads them the way
jaxres.data.imagenet's training pipeline does: interleaved shards, shuffle,
enumerate, map(imagenet.preprocess_for_train) (decode the random crop window,
flip, bicubic resize, normalise), batch, prefetch, with the same tf.data
options. Only the record source differs (no TFDS builder), which costs little
next to JPEG decoding.

For each tf.data thread count (private thread pool size, intra-op
parallelism 1) it reports wall-clock images/s and images per CPU-second of
this process. The latter is the per-core rate, and moves little when other
processes share the machine: cores needed to feed a GPU = GPU images/s /
(images per CPU-second).

Needs TensorFlow (not on the GPU image; run it on a CPU host).

Example (BENCHMARKS.md, about 2 minutes on 2 cores):
  python experiments/input_pipeline_benchmark.py --threads=1,2 --batches=20
"""
import argparse
import datetime
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Common ImageNet shapes (width, height); most train images are 500 wide.
SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (400, 300))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--num_images', type=int, default=256,
                 help='distinct JPEGs (cycled through)')
  p.add_argument('--num_shards', type=int, default=4)
  p.add_argument('--quality', type=int, default=90)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--threads', default='1,2',
                 help='comma-separated tf.data thread counts')
  p.add_argument('--warmup_batches', type=int, default=3)
  p.add_argument('--batches', type=int, default=20, help='timed batches')
  p.add_argument('--windows', type=int, default=3,
                 help='timed windows per thread count (median)')
  p.add_argument('--target_images_per_s', default='3000,7800',
                 help='GPU rates to size the CPU count for')
  p.add_argument('--workdir', default=None, help='default: a temp dir')
  p.add_argument('--json', default=None)
  return p.parse_args(argv)


def _tf():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  return tf


def make_image(rng, width, height):
  """Smooth colour fields plus texture and noise: JPEG sizes like photos."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def upsampled(cells_x, amplitude):
    small = rng.uniform(-amplitude, amplitude,
                        (max(cells_x * height // width, 2), cells_x, 3))
    small = Image.fromarray(np.uint8(np.clip(small + 128, 0, 255)))
    return np.asarray(small.resize((width, height), Image.BICUBIC),
                      np.float32) - 128

  image = (128 + upsampled(6, 100) + upsampled(40, 40) + upsampled(160, 70)
           + rng.normal(0, 14, (height, width, 3)))
  return np.uint8(np.clip(image, 0, 255))


def write_shards(workdir, num_images, num_shards, quality, seed=0):
  """TFRecord shards of {'image': JPEG bytes, 'label': int64}; mean bytes."""
  tf = _tf()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  paths = [os.path.join(workdir, f'train.tfrecord-{i:05d}-of-{num_shards:05d}')
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  sizes = []
  for i in range(num_images):
    width, height = SIZES[i % len(SIZES)]
    buf = io.BytesIO()
    Image.fromarray(make_image(rng, width, height)).save(
        buf, format='JPEG', quality=quality)
    data = buf.getvalue()
    sizes.append(len(data))
    example = tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        'label': tf.train.Feature(
            int64_list=tf.train.Int64List(value=[i % 1000])),
    }))
    writers[i % num_shards].write(example.SerializeToString())
  for w in writers:
    w.close()
  return paths, float(np.mean(sizes))


def train_dataset(paths, *, threads, batch_size, image_size, dtype, seed=0):
  """jaxres.data.imagenet's training pipeline over the generated shards."""
  tf = _tf()
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top

  options = tf.data.Options()
  options.deterministic = True  # As imagenet._options().
  options.experimental_optimization.map_parallelization = True
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  features = {'image': tf.io.FixedLenFeature([], tf.string),
              'label': tf.io.FixedLenFeature([], tf.int64)}
  ds = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=seed)
  ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=len(paths),
                     block_length=16, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
  ds = ds.map(lambda r: tf.io.parse_single_example(r, features))
  ds = ds.repeat().shuffle(1024, seed=seed).enumerate()
  tf_dtype = tf.bfloat16 if dtype == 'bfloat16' else tf.float32

  def preprocess(index, example):
    rng = tf.stack([tf.constant(seed, tf.int64), index])
    image = imagenet.preprocess_for_train(example['image'], rng, image_size,
                                          tf_dtype, is_jpeg=True)
    return dict(image=image, label=tf.cast(example['label'], tf.int32))

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _cpu_seconds():
  t = os.times()
  return t.user + t.system


def measure(ds, *, warmup_batches, batches, windows, batch_size):
  it = ds.as_numpy_iterator()
  for _ in range(warmup_batches):
    next(it)
  wall, cpu = [], []
  for _ in range(windows):
    c0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
      batch = next(it)
    wall.append(time.perf_counter() - t0)
    cpu.append(_cpu_seconds() - c0)
  assert batch['image'].shape[0] == batch_size
  assert np.isfinite(batch['image'].astype(np.float32)).all()
  images = batches * batch_size
  return {'images_per_s': images / statistics.median(wall),
          'images_per_cpu_s': images / statistics.median(cpu),
          'window_s': wall, 'window_cpu_s': cpu}


def main(argv=None):
  args = parse_args(argv)
  tf = _tf()
  workdir = args.workdir or tempfile.mkdtemp(prefix='jaxres_jpegs_')
  os.makedirs(workdir, exist_ok=True)
  try:
    return _run(args, tf, workdir)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)


def _run(args, tf, workdir):
  t0 = time.perf_counter()
  paths, mean_bytes = write_shards(workdir, args.num_images, args.num_shards,
                                   args.quality)
  result = {
      'date': datetime.date.today().isoformat(), 'cpu_count': os.cpu_count(),
      'tensorflow': tf.__version__, 'num_images': args.num_images,
      'mean_jpeg_bytes': mean_bytes, 'quality': args.quality,
      'image_size': args.image_size, 'dtype': args.dtype,
      'batch_size': args.batch_size, 'loadavg_start': os.getloadavg()[0],
      'write_s': time.perf_counter() - t0, 'runs': []}
  print(f'{args.num_images} JPEGs, mean {mean_bytes / 1e3:.0f} kB')
  for threads in (int(t) for t in args.threads.split(',')):
    ds = train_dataset(paths, threads=threads, batch_size=args.batch_size,
                       image_size=args.image_size, dtype=args.dtype)
    run = measure(ds, warmup_batches=args.warmup_batches,
                  batches=args.batches, windows=args.windows,
                  batch_size=args.batch_size)
    run['threads'] = threads
    result['runs'].append(run)
    print(f"threads {threads}: {run['images_per_s']:.0f} img/s wall, "
          f"{run['images_per_cpu_s']:.0f} img per CPU-second")
  result['loadavg_end'] = os.getloadavg()[0]

  per_core = max(r['images_per_cpu_s'] for r in result['runs'])
  print('\n| tf.data threads | img/s (wall) | img per CPU-second |')
  print('|---|---|---|')
  for r in result['runs']:
    print(f"| {r['threads']} | {r['images_per_s']:.0f} | "
          f"{r['images_per_cpu_s']:.0f} |")
  for target in (float(t) for t in args.target_images_per_s.split(',')):
    print(f'Feeding {target:,.0f} img/s needs about {target / per_core:.0f} '
          'such cores.')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == '__main__':
  main()
