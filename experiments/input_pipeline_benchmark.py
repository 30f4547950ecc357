r"""Input pipelines side by side, per CPU core: jaxres against PyTorch.

One run, the same generated JPEGs for all four pipelines:

  classification (224x224 float32 batches of 64):
    jaxres   jaxres's ImageNet training pipeline: TFRecord shards of
             tf.train.Example {'image', 'label'} as TFDS writes them, read as
             TFDS hands them over (interleave, shuffle, enumerate), then the
             trainer's own stage, tfds_train.batches (map
             imagenet.preprocess_for_train: decode only the random crop
             window, flip, resize, normalise; batch, prefetch). One row per
             --interpolations entry: bicubic (the default of the ImageNet
             configs) and bilinear (what torchvision does: like for like).
    PyTorch  torch.utils.data.DataLoader over the same JPEGs as files, doing
             what torchvision's ImageFolder + RandomResizedCrop(224) +
             RandomHorizontalFlip + ToTensor + Normalize do, written with PIL
             and numpy (torchvision does not import here): pil_loader, the
             get_params crop sampler, PIL crop + bilinear resize, flip,
             ToTensor (HWC uint8 -> contiguous CHW float / 255), Normalize
             (F.normalize: clone, std check, sub_, div_), default collate.
  segmentation (512x512 crops, batches of 16, random scale 0.5-2.0):
    jaxres   jaxres.data.segmentation on a VOC-style folder of the same
             JPEGs plus PNG masks: get_segmentation_datasets(...).
             train_iter_fn(0) (decode once, resize only the crop window).
    PyTorch  the transforms of torchvision's references/segmentation (also
             the layout of the common DeepLab repositories): PIL open, resize
             the whole image (bilinear) and mask (nearest) by the random
             scale, flip, pad to the crop (image 0, mask 255), random crop,
             PILToTensor + ToDtype(float, scale=True) + Normalize, mask to
             int64; DataLoader workers. (The reference draws the shorter
             side from [0.5, 2.0] x base_size; here the factor is drawn from
             the same range as jaxres's, so both do the same pixels.)

Augmentation rows (--augments): the jaxres ImageNet pipeline again, right
after its plain row and with the same data, with each training augmentation
of jaxres.data.augment (RandAugment n=2 m=9, TrivialAugmentWide, AutoAugment
ImageNet, RandAugment + random erasing p=0.25); each row records 'augment'.

Workers: tf.data private thread pool / jaxres data threads / DataLoader
worker processes, one count per run (--workers=1,2). Reported per pipeline:
wall images/s and images per CPU-second of this process plus its live child
processes (DataLoader workers), i.e. per core. The per-core rate moves little
when other processes share the machine.

Needs TensorFlow (the jaxres ImageNet side), PIL, numpy, torch.

Example (BENCHMARKS.md, about 4 minutes on 2 cores, plus about 1 minute per
augmentation row and worker count):
  python experiments/input_pipeline_benchmark.py --workers=1,2 \
      --json=experiments/results/cpu_input_pipelines.json
"""
import argparse
import datetime
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Common ImageNet shapes (width, height); most train images are 500 wide
# (PASCAL VOC images are about the same size).
SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (400, 300))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
NUM_SEG_CLASSES = 21
PIPELINES = ('jaxres_imagenet', 'torch_imagenet', 'jaxres_seg', 'torch_seg')
AUGMENTS = ('randaugment', 'trivialaugment', 'autoaugment',
            'randaugment+erasing')
ERASING_PROBABILITY = 0.25  # timm's usual --reprob.


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--num_images', type=int, default=256,
                 help='distinct JPEGs (cycled through)')
  p.add_argument('--num_shards', type=int, default=4)
  p.add_argument('--quality', type=int, default=90)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--crop_size', type=int, default=512)
  p.add_argument('--seg_batch_size', type=int, default=16)
  p.add_argument('--scale_range', default='0.5,2.0')
  p.add_argument('--workers', default='1,2',
                 help='comma-separated worker counts (threads or processes)')
  p.add_argument('--pipelines', default=','.join(PIPELINES))
  p.add_argument('--augments', default=','.join(AUGMENTS),
                 help='extra jaxres_imagenet rows, one per augmentation '
                 '(policy[+erasing]); "" for none')
  p.add_argument('--interpolations', default='bicubic,bilinear',
                 help='jaxres ImageNet rows, one per config.interpolation: '
                 'bicubic is the default of the ImageNet configs, bilinear '
                 "what torchvision's RandomResizedCrop does (like for like); "
                 'the augmentation rows use the first')
  p.add_argument('--warmup_images', type=int, default=128)
  p.add_argument('--images', type=int, default=640,
                 help='images per timed window')
  p.add_argument('--windows', type=int, default=3,
                 help='timed windows per pipeline and worker count (median)')
  p.add_argument('--target_images_per_s', default='3000,7800',
                 help='GPU rates to size the CPU count for')
  p.add_argument('--workdir', default=None, help='default: a temp dir')
  p.add_argument('--json', default=None)
  args = p.parse_args(argv)
  args.scale_range = tuple(float(v) for v in args.scale_range.split(','))
  args.workers = [int(w) for w in args.workers.split(',')]
  args.pipelines = args.pipelines.split(',')
  args.augments = [a for a in args.augments.split(',') if a]
  args.interpolations = [i for i in args.interpolations.split(',') if i]
  return args


# ---------------------------------------------------------------------------
# The generated data: JPEG files, the same bytes in TFRecords, VOC masks.
# ---------------------------------------------------------------------------

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


def make_mask(rng, width, height):
  """Class-index mask: a few random rectangles and ellipses, 255 borders."""
  yy, xx = np.mgrid[:height, :width]
  mask = np.zeros((height, width), np.uint8)
  for _ in range(int(rng.integers(1, 5))):
    cls = int(rng.integers(1, NUM_SEG_CLASSES))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(20, height / 2), rng.uniform(20, width / 2)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    mask[inside] = cls
    border = inside & (((yy - cy) / (ry + 3)) ** 2
                       + ((xx - cx) / (rx + 3)) ** 2 > 0.85)
    mask[border] = 255
  return mask


def write_data(workdir, num_images, num_shards, quality, seed=0):
  """JPEG files (VOC layout, with masks) and TFRecord shards of the same bytes.

  Returns (jpeg paths, tfrecord paths, voc root, mean JPEG bytes).
  """
  tf = _tf()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  voc = os.path.join(workdir, 'voc')
  for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    os.makedirs(os.path.join(voc, sub), exist_ok=True)
  shards = [os.path.join(workdir, f'train.tfrecord-{i:05d}-of-{num_shards:05d}')
            for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in shards]
  jpegs, sizes, ids = [], [], []
  for i in range(num_images):
    width, height = SIZES[i % len(SIZES)]
    buf = io.BytesIO()
    Image.fromarray(make_image(rng, width, height)).save(
        buf, format='JPEG', quality=quality)
    data = buf.getvalue()
    sizes.append(len(data))
    name = f'img_{i:05d}'
    ids.append(name)
    path = os.path.join(voc, 'JPEGImages', name + '.jpg')
    with open(path, 'wb') as f:
      f.write(data)
    jpegs.append(path)
    Image.fromarray(make_mask(rng, width, height)).save(
        os.path.join(voc, 'SegmentationClass', name + '.png'))
    example = tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        'label': tf.train.Feature(
            int64_list=tf.train.Int64List(value=[i % 1000])),
    }))
    writers[i % num_shards].write(example.SerializeToString())
  for w in writers:
    w.close()
  for split, split_ids in (('train', ids), ('val', ids[:8])):
    with open(os.path.join(voc, 'ImageSets/Segmentation', split + '.txt'),
              'w') as f:
      f.write('\n'.join(split_ids) + '\n')
  return jpegs, shards, voc, float(np.mean(sizes))


# ---------------------------------------------------------------------------
# jaxres pipelines.
# ---------------------------------------------------------------------------

def augment_spec(name):
  """'policy[+erasing]' -> jaxres.data.augment.Augment (None for 'none')."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from jaxres.data import augment  # pylint: disable=g-import-not-at-top
  if name in (None, 'none'):
    return None
  policy, _, extra = name.partition('+')
  if extra not in ('', 'erasing'):
    raise ValueError(f'--augments entry {name!r}: the suffix is "+erasing".')
  return augment.Augment(
      policy=policy, random_erasing=ERASING_PROBABILITY if extra else 0.0)


def jaxres_imagenet(paths, *, threads, batch_size, image_size, dtype='float32',
                    seed=0, augment=None, interpolation=None):
  """jaxres's ImageNet training pipeline over the generated shards.

  The records are read as TFDS's reader hands them over (interleaved shard
  files, shuffled, enumerated); from there on it is the trainer's own stage,
  ``tfds_train.batches`` (map(imagenet.preprocess_for_train), batch,
  prefetch) with ``imagenet.dataset_options()``, plus the thread count.
  """
  tf = _tf()
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  from jaxres.data import imagenet
  from jaxres.data import tfds_train
  # pylint: enable=g-import-not-at-top

  options = imagenet.dataset_options()
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
  return tfds_train.batches(
      ds, seed=seed, batch_size=batch_size, image_size=image_size,
      dtype=imagenet.tf_dtype(dtype), is_jpeg=True, augment=augment,
      interpolation=interpolation, options=options)


def jaxres_imagenet_batches(paths, workers, args, augment=None,
                            interpolation=None):
  ds = jaxres_imagenet(paths, threads=workers, batch_size=args.batch_size,
                       image_size=args.image_size,
                       augment=augment_spec(augment),
                       interpolation=interpolation)
  return ds.as_numpy_iterator(), args.batch_size


def jaxres_seg_batches(voc_root, workers, args):
  """jaxres.data.segmentation's training batches over the VOC folder."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from configs import segmentation_common  # pylint: disable=g-import-not-at-top
  from jaxres.data import segmentation  # pylint: disable=g-import-not-at-top
  config = segmentation_common.segmentation_config()
  config.dataset = 'voc'
  config.data_dir = voc_root
  config.num_classes = NUM_SEG_CLASSES
  config.crop_size = args.crop_size
  config.scale_range = args.scale_range
  config.batch_size = args.seg_batch_size  # Global = this process's.
  config.eval_batch_size = args.seg_batch_size
  config.data_workers = workers
  config.label_check_files = 8
  data = segmentation.get_segmentation_datasets(config, seed=0)
  # The one line to change if the dataset object's API changes.
  return data.train_iter_fn(0), args.seg_batch_size


# ---------------------------------------------------------------------------
# PyTorch pipelines (torchvision's transforms, written with PIL and numpy).
# ---------------------------------------------------------------------------

def pil_loader(path):
  """torchvision.datasets.folder.pil_loader."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    img = Image.open(f)
    return img.convert('RGB')


def random_resized_crop_params(width, height, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)):
  """torchvision RandomResizedCrop.get_params: (top, left, h, w)."""
  area = height * width
  log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
  for _ in range(10):
    target_area = area * random.uniform(*scale)
    aspect = np.exp(random.uniform(*log_ratio))
    w = int(round(np.sqrt(target_area * aspect)))
    h = int(round(np.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return random.randint(0, height - h), random.randint(0, width - w), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def normalize(x):
  """torchvision.transforms.functional.normalize (inplace=False): a clone,
  the std == 0 check, then sub_ and div_ per channel."""
  import torch  # pylint: disable=g-import-not-at-top
  x = x.clone()
  mean = torch.as_tensor(MEAN, dtype=x.dtype)
  std = torch.as_tensor(STD, dtype=x.dtype)
  if (std == 0).any():
    raise ValueError('std 0')
  return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


def to_tensor_normalized(img):
  """transforms.ToTensor (CHW contiguous, float / 255) then Normalize."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(np.array(img, np.uint8, copy=True))
  x = x.view(img.size[1], img.size[0], 3).permute((2, 0, 1)).contiguous()
  return normalize(x.to(dtype=torch.get_default_dtype()).div(255))


def pil_to_tensor_normalized(img):
  """references/segmentation: PILToTensor (F.pil_to_tensor: CHW view, not
  made contiguous), ToDtype(torch.float, scale=True)
  (F.convert_image_dtype: .to(float) / 255), Normalize."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.as_tensor(np.array(img, copy=True))
  x = x.view(img.size[1], img.size[0], 3).permute((2, 0, 1))
  return normalize(x.to(torch.float) / 255.0)


class TorchImageFolderTrain:
  """ImageFolder-style dataset with the standard ImageNet train transform."""

  def __init__(self, paths, image_size):
    self.paths, self.image_size = paths, image_size

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    img = pil_loader(self.paths[index])
    top, left, h, w = random_resized_crop_params(*img.size)
    img = img.crop((left, top, left + w, top + h)).resize(
        (self.image_size, self.image_size), Image.BILINEAR)
    if random.random() < 0.5:
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor_normalized(img), index % 1000


class TorchSegTrain:
  """references/segmentation: RandomResize, RandomHorizontalFlip, RandomCrop
  (pad_if_smaller), PILToTensor + ToDtype, Normalize."""

  def __init__(self, voc_root, crop_size, scale_range):
    names = sorted(os.listdir(os.path.join(voc_root, 'JPEGImages')))
    self.items = [(os.path.join(voc_root, 'JPEGImages', n),
                   os.path.join(voc_root, 'SegmentationClass',
                                n[:-4] + '.png')) for n in names]
    self.crop, self.scale_range = crop_size, scale_range

  def __len__(self):
    return len(self.items)

  def __getitem__(self, index):
    import torch  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    image_path, mask_path = self.items[index]
    image = pil_loader(image_path)
    target = Image.open(mask_path)
    scale = random.uniform(*self.scale_range)
    size = (max(1, round(image.width * scale)),
            max(1, round(image.height * scale)))
    image = image.resize(size, Image.BILINEAR)
    target = target.resize(size, Image.NEAREST)
    if random.random() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
      target = target.transpose(Image.FLIP_LEFT_RIGHT)
    if min(image.size) < self.crop:  # pad_if_smaller (right and bottom).
      padded = (max(image.width, self.crop), max(image.height, self.crop))
      canvas = Image.new('RGB', padded, 0)
      canvas.paste(image, (0, 0))
      image = canvas
      canvas = Image.new('L', padded, 255)
      canvas.paste(target, (0, 0))
      target = canvas
    top = random.randint(0, image.height - self.crop)
    left = random.randint(0, image.width - self.crop)
    box = (left, top, left + self.crop, top + self.crop)
    image, target = image.crop(box), target.crop(box)
    return (pil_to_tensor_normalized(image),
            torch.as_tensor(np.array(target), dtype=torch.int64))


def _seed_worker(worker_id):
  random.seed(1000 + worker_id)


def _torch_batches(dataset, workers, batch_size):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
      drop_last=True, persistent_workers=True, prefetch_factor=2,
      worker_init_fn=_seed_worker,
      generator=torch.Generator().manual_seed(0))

  def forever():
    while True:
      yield from loader

  return forever(), batch_size


def torch_imagenet_batches(jpegs, workers, args):
  return _torch_batches(TorchImageFolderTrain(jpegs, args.image_size),
                        workers, args.batch_size)


def torch_seg_batches(voc_root, workers, args):
  return _torch_batches(
      TorchSegTrain(voc_root, args.crop_size, args.scale_range), workers,
      args.seg_batch_size)


# ---------------------------------------------------------------------------
# Measurement.
# ---------------------------------------------------------------------------

def _tree_cpu_seconds():
  """CPU seconds of this process and its live descendants (DataLoader workers).

  os.times() counts children only once they are reaped; persistent workers
  live through the windows, so they are read from /proc.
  """
  t = os.times()
  total = t.user + t.system
  tick = os.sysconf('SC_CLK_TCK')
  parents = {}
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      parents[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    except (OSError, IndexError, ValueError):
      pass
  tree, frontier = set(), {os.getpid()}
  while frontier:
    frontier = {p for p, (pp, _) in parents.items()
                if pp in frontier and p not in tree}
    tree |= frontier
  return total + sum(parents[p][1] for p in tree) / tick


def _image_of(batch):
  if isinstance(batch, dict):
    return np.asarray(batch['image'])
  return batch[0].numpy()


def measure(batches, batch_size, *, warmup_images, images, windows):
  for _ in range(max(1, warmup_images // batch_size)):
    batch = next(batches)
  n = max(1, images // batch_size)
  wall, cpu = [], []
  for _ in range(windows):
    c0, t0 = _tree_cpu_seconds(), time.perf_counter()
    for _ in range(n):
      batch = next(batches)
    wall.append(time.perf_counter() - t0)
    cpu.append(_tree_cpu_seconds() - c0)
  image = _image_of(batch)
  assert image.shape[0] == batch_size and np.isfinite(image).all()
  return {'images_per_s': n * batch_size / statistics.median(wall),
          'images_per_cpu_s': n * batch_size / statistics.median(cpu),
          'window_s': wall, 'window_cpu_s': cpu,
          'batch_shape': list(image.shape)}


def main(argv=None):
  args = parse_args(argv)
  workdir = args.workdir or tempfile.mkdtemp(prefix='jaxres_jpegs_')
  os.makedirs(workdir, exist_ok=True)
  try:
    return _run(args, workdir)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)


def _run(args, workdir):
  tf = _tf()
  import PIL  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  jpegs, shards, voc_root, mean_bytes = write_data(
      workdir, args.num_images, args.num_shards, args.quality)
  result = {
      'date': datetime.date.today().isoformat(), 'cpu_count': os.cpu_count(),
      'tensorflow': tf.__version__, 'torch': torch.__version__,
      'pillow': PIL.__version__, 'num_images': args.num_images,
      'mean_jpeg_bytes': mean_bytes, 'quality': args.quality,
      'image_size': args.image_size, 'batch_size': args.batch_size,
      'crop_size': args.crop_size, 'seg_batch_size': args.seg_batch_size,
      'scale_range': args.scale_range, 'write_s': time.perf_counter() - t0,
      'runs': []}
  print(f'{args.num_images} JPEGs, mean {mean_bytes / 1e3:.0f} kB')
  makers = {
      'torch_imagenet': lambda w: torch_imagenet_batches(jpegs, w, args),
      'jaxres_seg': lambda w: jaxres_seg_batches(voc_root, w, args),
      'torch_seg': lambda w: torch_seg_batches(voc_root, w, args),
  }
  result['augments'] = args.augments
  result['erasing_probability'] = ERASING_PROBABILITY
  result['interpolations'] = args.interpolations
  for workers in args.workers:
    for name in args.pipelines:
      variants = [(None, None)]
      if name == 'jaxres_imagenet':
        variants = ([(None, i) for i in args.interpolations] +
                    [(a, args.interpolations[0]) for a in args.augments])
      for augment, interpolation in variants:
        load = os.getloadavg()[0]
        if name == 'jaxres_imagenet':
          batches, batch_size = jaxres_imagenet_batches(
              shards, workers, args, augment, interpolation)
        else:
          batches, batch_size = makers[name](workers)
        run = measure(batches, batch_size, warmup_images=args.warmup_images,
                      images=args.images, windows=args.windows)
        del batches  # Ends DataLoader workers before the next pipeline.
        run.update(pipeline=name, workers=workers, loadavg_start=load,
                   loadavg_end=os.getloadavg()[0])
        label = name
        if name == 'jaxres_imagenet':
          run['augment'] = augment or 'none'
          run['interpolation'] = interpolation
          label += f' {interpolation}' + (f' + {augment}' if augment else '')
        result['runs'].append(run)
        print(f"{label} workers {workers}: {run['images_per_s']:.0f} img/s "
              f"wall, {run['images_per_cpu_s']:.0f} img per CPU-second "
              f"(load {load:.1f})", flush=True)
  print()
  print(format_table(result))
  if args.augments and 'jaxres_imagenet' in args.pipelines:
    print()
    print(format_augment_table(result))
  imagenet = [r['images_per_cpu_s'] for r in result['runs']
              if r['pipeline'] == 'jaxres_imagenet']
  for target in (float(t) for t in args.target_images_per_s.split(',')):
    if imagenet:
      print(f'Feeding {target:,.0f} img/s needs about '
            f'{target / max(imagenet):.0f} cores like these (jaxres ImageNet).')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


def format_table(result):
  """One row per task, worker count and jaxres interpolation (ImageNet)."""
  plain = [r for r in result['runs'] if r.get('augment', 'none') == 'none']
  runs = {(r['pipeline'], r['workers'], r.get('interpolation')): r
          for r in plain}
  interpolations = result.get('interpolations') or [None]
  lines = ['| task | workers | jaxres img/s | PyTorch img/s | jaxres img per '
           'CPU-s | PyTorch img per CPU-s | per-core ratio | load avg |',
           '|---|---|---|---|---|---|---|---|']
  rows = [('imagenet', i) for i in interpolations] + [('seg', None)]
  for task, interpolation in rows:
    for workers in sorted({r['workers'] for r in plain}):
      jx = runs.get((f'jaxres_{task}', workers, interpolation))
      pt = runs.get((f'torch_{task}', workers, None))
      if not jx and not pt:
        continue
      fmt = lambda r, k: f'{r[k]:.0f}' if r else 'n/a'
      ratio = (f"{jx['images_per_cpu_s'] / pt['images_per_cpu_s']:.2f}"
               if jx and pt else 'n/a')
      loads = [f"{r['loadavg_start']:.1f}" for r in (jx, pt) if r]
      name = task
      if interpolation:
        like = ' (like for like)' if interpolation == 'bilinear' else ''
        name = f'{task}, jaxres {interpolation}{like}'
      lines.append(
          f"| {name} | {workers} | {fmt(jx, 'images_per_s')} | "
          f"{fmt(pt, 'images_per_s')} | {fmt(jx, 'images_per_cpu_s')} | "
          f"{fmt(pt, 'images_per_cpu_s')} | {ratio} | {', '.join(loads)} |")
  return '\n'.join(lines)


def format_augment_table(result):
  """The jaxres ImageNet rows, one per augmentation, against 'none' (all
  with the first --interpolations entry)."""
  first = (result.get('interpolations') or [None])[0]
  runs = [r for r in result['runs'] if r['pipeline'] == 'jaxres_imagenet'
          and r.get('interpolation') == first]
  plain = {r['workers']: r for r in runs if r.get('augment') == 'none'}
  lines = ['| augment | workers | img/s | img per CPU-s | per-core vs none '
           '| load avg |', '|---|---|---|---|---|---|']
  for r in sorted(runs, key=lambda r: r['workers']):
    base = plain.get(r['workers'])
    ratio = (f"{r['images_per_cpu_s'] / base['images_per_cpu_s']:.2f}"
             if base else 'n/a')
    lines.append(f"| {r.get('augment', 'none')} | {r['workers']} | "
                 f"{r['images_per_s']:.0f} | {r['images_per_cpu_s']:.0f} | "
                 f"{ratio} | {r['loadavg_start']:.1f} |")
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
