"""Input pipelines; the trainer calls ``get_classification_datasets``.

Config fields read (``ml_collections.ConfigDict``):
  dataset            'shapes' (embedded, generated with numpy), 'synthetic'
                     (random tensors, for benchmarks), 'folder' (a user
                     folder root/<split>/<class>/*.jpg at data_dir, see
                     folder.py) or a TFDS builder name
                     with 'image'/'label' features ('imagenet2012',
                     'imagenette', 'cifar10', ...).
  data_dir           TFDS data directory; None: TFDS's default
                     ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  image_size         side of the square images the model sees (at eval).
  train_image_size   TFDS and folder training: side of the random-resized
                     crop (torchvision's ResNet-50 V2 recipe trains at 176
                     for 224); None: image_size. The eval crop and the
                     recorded image_shape stay image_size.
  batch_size         GLOBAL training batch size; every pipeline makes only
                     this process's rows of each global batch.
  eval_batch_size    GLOBAL eval batch size (None/0: batch_size).
  shuffle_buffer     TFDS record shuffle buffer (examples).
  tfds_read          TFDS training: 'shards', 'stream' or 'auto' (see
                     ``tfds_read`` and tfds_train.py).
  num_classes        synthetic: number of classes. Others: None/0 takes the
                     dataset's count, any other value must equal it.
  input_dtype        'float32'; 'bfloat16' halves host to device traffic
                     for TFDS, folder and synthetic inputs.
  augment, randaugment_n, randaugment_m, randaugment_mstd, random_erasing
                     TFDS and folder training augmentation (augment.py);
                     'shapes' and 'synthetic' ignore them.
  eval_crop_pct      TFDS and folder eval: shorter side resized to
                     image_size / eval_crop_pct, centre crop. None: TFDS
                     image_size / (image_size + 32), folder 0.875.
  interpolation      TFDS and folder train and eval resizes: 'bilinear' or
                     'bicubic'. None: TFDS bicubic, folder bilinear.
  shapes_train_size, shapes_eval_size   examples drawn for 'shapes'.
Not declared in configs/common.py, read with defaults: data_workers (threads;
shapes: 4 at most, folder: os.cpu_count()), prefetch_batches (2) and the
other folder fields of folder.py.

  data = get_classification_datasets(config, seed=0, process_index=0,
                                     process_count=1)
  batches = data.train_iter_fn(start_step)   # this process's rows, forever
  for batch in data.eval_iter_fn(): ...      # + mask; one padded pass

No module in this package imports TensorFlow at import time; only the TFDS
path (``jaxres.data.imagenet``) does, inside its functions.
"""
import concurrent.futures
import dataclasses
import functools
import os
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

# Re-exported: `from jaxres.data import DatasetNotFoundError` and the others.
# pylint: disable=unused-import
from jaxres.data.errors import BadImageError
from jaxres.data.errors import DatasetNotFoundError
from jaxres.data.errors import FolderLayoutError
from jaxres.data.errors import LabelError
# pylint: enable=unused-import
from jaxres.data import batching

# ImageNet statistics in 0-255 RGB, the scale of decoded images (as in flax's
# examples/imagenet). Every pipeline normalises with these.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IGNORE_LABEL = 255

SHAPES_TRAIN_SEED = 0  # The embedded dataset is fixed, whatever the run seed.
SHAPES_EVAL_SEED = 1

_MEAN = np.asarray(MEAN_RGB, np.float32)
_STD = np.asarray(STDDEV_RGB, np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 (or 0-255 float) [..., 3] -> float32 ImageNet-normalised."""
  return (np.asarray(images).astype(np.float32) - _MEAN) / _STD


@functools.lru_cache(maxsize=64)
def _channel_rows(width: int) -> Tuple[np.ndarray, np.ndarray]:
  """float32 [width * 3] ImageNet mean and std, repeated per pixel."""
  return np.tile(_MEAN, width), np.tile(_STD, width)


def _rows(dst: np.ndarray) -> Optional[np.ndarray]:
  """dst [h, w, 3] as an [h, w * 3] view, if its pixels are contiguous in rows."""
  rows = dst.view()
  try:
    rows.shape = (dst.shape[0], dst.shape[1] * 3)  # A view, never a copy.
  except AttributeError:
    return None
  return rows


def normalize_into(dst: np.ndarray, image) -> None:
  """dst[...] = normalize(image), without a temporary for float32 dst.

  For a uint8 [h, w, 3] image and a float32 dst whose pixels are contiguous
  within a row (a batch slot, or a window of one), it works on rows of
  w * 3 values against a repeated mean/std instead of broadcasting a
  3-vector per pixel, which numpy runs about ten times slower; the float32
  operations, and so the bits, are the same.
  """
  image = np.asarray(image)
  if dst.dtype != np.float32:
    dst[...] = normalize(image)
    return
  rows = (_rows(dst) if dst.ndim == 3 and dst.shape[-1] == 3
          and image.dtype == np.uint8 and image.shape == dst.shape else None)
  if rows is None:
    np.subtract(image, _MEAN, out=dst, casting='unsafe')
    dst /= _STD
    return
  mean, std = _channel_rows(dst.shape[1])
  np.copyto(rows, image.reshape(rows.shape), casting='unsafe')  # Exact.
  rows -= mean
  rows /= std


@dataclasses.dataclass
class ClassificationData:
  """What the trainer needs from an input pipeline.

  ``train_iter_fn(start_step)`` yields this process's rows of the global
  training batches from ``start_step`` on (for a fresh run or a resumed one);
  ``eval_iter_fn()`` returns a fresh pass over the eval split, padded so that
  every process yields the same number of batches, with a ``mask`` field.
  Example counts are global (all processes).
  """
  train_iter_fn: Callable[[int], Iterator[dict]]
  eval_iter_fn: Callable[[], Iterator[dict]]
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  image_shape: Tuple[int, int, int]  # Eval input; training may be smaller.
  class_names: Tuple[str, ...]


GLOBAL_ORDER = 'global'
RANDOM_ACCESS = ('shapes', 'synthetic', 'folder')  # Ordered by batching.py.


def tfds_read(config, process_count: int, recorded_order=None) -> str:
  """How the TFDS pipeline splits work: 'shards' or 'stream'.

  config.tfds_read='auto' reads the stream with one process (the same order
  as shards) and shards with several, unless the run being continued had a
  global order: then the stream keeps that order on any number of processes.
  """
  read = config.get('tfds_read', 'auto')
  if read != 'auto':
    return read
  if process_count == 1 or recorded_order == GLOBAL_ORDER:
    return 'stream'
  return 'shards'


def train_order(config, process_count: int, read=None) -> str:
  """What the training order depends on: 'global' (seed, step and position
  in the global batch only) or 'shards of P processes' (TFDS read='shards')."""
  if (config.get('task', 'classification') != 'classification' or
      config.dataset in RANDOM_ACCESS or process_count == 1):
    return GLOBAL_ORDER
  if (read or tfds_read(config, process_count)) == 'stream':
    return GLOBAL_ORDER
  return f'shards of {process_count} processes'


def _check_num_classes(config, dataset_classes: int) -> int:
  wanted = config.num_classes
  if wanted and wanted != dataset_classes:
    raise ValueError(
        f'config.num_classes={wanted} but dataset {config.dataset!r} has '
        f'{dataset_classes} classes. Set config.num_classes={dataset_classes} '
        '(or None to take it from the dataset).')
  return dataset_classes


def train_image_size(config) -> int:
  """Side of the training crop: config.train_image_size, else image_size."""
  return config.get('train_image_size') or config.image_size


def get_classification_datasets(config, *, seed: int, process_index: int,
                                process_count: int) -> ClassificationData:
  """Builds train and eval pipelines for ``config.dataset``, once.

  Args:
    config: see the module docstring for the fields read.
    seed: data order and augmentation seed; the training order is a pure
      function of (seed, step).
    process_index, process_count: this process's place among all processes.
  """
  # pylint: disable=g-import-not-at-top
  batch_size = config.batch_size
  eval_batch_size = config.eval_batch_size or batch_size
  batching.per_process(batch_size, process_count, 'batch_size')
  batching.per_process(eval_batch_size, process_count, 'eval_batch_size')
  image_size = config.image_size
  dtype = config.input_dtype
  proc = dict(process_index=process_index, process_count=process_count)

  if config.dataset == 'shapes':
    from jaxres.data import arrays, shapes
    num_classes = _check_num_classes(config, shapes.NUM_CLASSES)
    train_images, train_labels = shapes.make_classification(
        config.shapes_train_size, image_size, SHAPES_TRAIN_SEED)
    eval_images, eval_labels = shapes.make_classification(
        config.shapes_eval_size, image_size, SHAPES_EVAL_SEED)
    pool = concurrent.futures.ThreadPoolExecutor(
        config.data_workers or min(4, os.cpu_count()),
        thread_name_prefix='shapes-data')
    threads = dict(pool=pool, prefetch=config.prefetch_batches)
    train_iter_fn = arrays.train_batches(
        train_images, train_labels, batch_size, seed,
        augment_fn=arrays.random_crop_flip(padding=4), **proc, **threads)
    eval_iter_fn = functools.partial(arrays.eval_iterator, eval_images,
                                     eval_labels, eval_batch_size, **proc,
                                     **threads)
    return ClassificationData(
        train_iter_fn, eval_iter_fn, len(train_images), len(eval_images),
        num_classes, tuple(train_images.shape[1:]), shapes.CLASS_NAMES)

  if config.dataset == 'synthetic':
    from jaxres.data import synthetic
    num_classes = config.num_classes or 1000
    common = dict(image_size=image_size, num_classes=num_classes, dtype=dtype,
                  **proc)

    def train_iter_fn(start_step):
      del start_step  # The same batch at every step.
      return synthetic.synthetic_iterator(batch_size, seed=seed, **common)

    eval_iter_fn = functools.partial(
        synthetic.synthetic_iterator, eval_batch_size, seed=seed + 1,
        num_batches=synthetic.EVAL_BATCHES, with_mask=True, **common)
    return ClassificationData(
        train_iter_fn, eval_iter_fn, synthetic.NUM_TRAIN_EXAMPLES,
        synthetic.EVAL_BATCHES * eval_batch_size, num_classes,
        (image_size, image_size, 3), tuple(map(str, range(num_classes))))

  if config.dataset == 'folder':
    from jaxres.data import folder
    data = folder.get_datasets(config, seed=seed, dtype=dtype, **proc)
    _check_num_classes(config, data.num_classes)
    return data

  from jaxres.data import augment, imagenet, tfds_train
  builder = imagenet.get_builder(config.dataset, config.data_dir)
  num_classes = _check_num_classes(config, imagenet.num_classes(builder))
  train_split, eval_split = imagenet.default_splits(builder)
  interpolation = config.get('interpolation')
  common = dict(dtype=dtype, interpolation=interpolation, **proc)
  train_augment = augment.Augment.from_config(config)

  def train_iter_fn(start_step):
    return tfds_train.train_iterator(
        builder, batch_size, seed=seed, start_step=start_step,
        split=train_split, shuffle_buffer=config.shuffle_buffer or 16 * 1024,
        read=tfds_read(config, process_count), augment=train_augment,
        image_size=train_image_size(config), **common)

  eval_iter_fn = functools.partial(imagenet.eval_iterator, builder,
                                   eval_batch_size, split=eval_split,
                                   crop_pct=config.get('eval_crop_pct'),
                                   image_size=image_size, **common)
  return ClassificationData(
      train_iter_fn, eval_iter_fn, imagenet.num_examples(builder, train_split),
      imagenet.num_examples(builder, eval_split), num_classes,
      (image_size, image_size, 3), imagenet.class_names(builder))
