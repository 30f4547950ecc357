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
  image_size         side of the square images the model sees.
  batch_size         GLOBAL training batch size (split over processes).
  eval_batch_size    GLOBAL eval batch size.
  shuffle_buffer     TFDS record shuffle buffer (examples).
  num_classes        synthetic: number of classes. Others: None/0 takes the
                     dataset's count, any other value must equal it.
  shapes_train_size, shapes_eval_size   examples drawn for 'shapes'.
Optional, read with defaults: input_dtype ('float32'; 'bfloat16' halves host
to device traffic for TFDS and synthetic inputs).

No module in this package imports TensorFlow at import time; only the TFDS
path (``jaxres.data.imagenet``) does, inside its functions.
"""
import dataclasses
import functools
from typing import Callable, Iterator, Tuple

import numpy as np

# ImageNet statistics in 0-255 RGB, the scale of decoded images (as in flax's
# examples/imagenet). Every pipeline normalises with these.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IGNORE_LABEL = 255

SHAPES_TRAIN_SEED = 0  # The embedded dataset is fixed, whatever the run seed.
SHAPES_EVAL_SEED = 1


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not on disk, and jaxres never downloads one itself."""


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 (or 0-255 float) [..., 3] -> float32 ImageNet-normalised."""
  mean = np.asarray(MEAN_RGB, np.float32)
  std = np.asarray(STDDEV_RGB, np.float32)
  return (images.astype(np.float32) - mean) / std


@dataclasses.dataclass
class ClassificationData:
  """What the trainer needs from an input pipeline.

  ``train_iter`` yields this process's batches from the requested start step;
  ``eval_iter_fn()`` returns a fresh pass over the eval split, padded so that
  every process yields the same number of batches, with a ``mask`` field.
  Example counts are global (all processes).
  """
  train_iter: Iterator[dict]
  eval_iter_fn: Callable[[], Iterator[dict]]
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  image_shape: Tuple[int, int, int]


def _per_process(global_size: int, process_count: int, name: str) -> int:
  if global_size % process_count:
    raise ValueError(f'config.{name}={global_size} is not divisible by the '
                     f'number of processes ({process_count}).')
  return global_size // process_count


def _check_num_classes(config, dataset_classes: int) -> int:
  wanted = config.get('num_classes')
  if wanted and wanted != dataset_classes:
    raise ValueError(
        f'config.num_classes={wanted} but dataset {config.dataset!r} has '
        f'{dataset_classes} classes. Set config.num_classes={dataset_classes} '
        '(or None to take it from the dataset).')
  return dataset_classes


def get_classification_datasets(config, *, seed: int, start_step: int,
                                process_index: int,
                                process_count: int) -> ClassificationData:
  """Builds train and eval pipelines for ``config.dataset``.

  Args:
    config: see the module docstring for the fields read.
    seed: data order and augmentation seed; the training order is a pure
      function of (seed, step).
    start_step: first training step to produce (for resuming).
    process_index, process_count: this process's place among all processes.
  """
  batch_size = _per_process(config.batch_size, process_count, 'batch_size')
  eval_batch_size = _per_process(
      config.get('eval_batch_size') or config.batch_size, process_count,
      'eval_batch_size')
  image_size = config.image_size
  dtype = config.get('input_dtype', 'float32')
  proc = dict(process_index=process_index, process_count=process_count)

  if config.dataset == 'shapes':
    # pylint: disable-next=g-import-not-at-top
    from jaxres.data import arrays, shapes
    num_classes = _check_num_classes(config, shapes.NUM_CLASSES)
    train_images, train_labels = shapes.make_classification(
        config.shapes_train_size, image_size, SHAPES_TRAIN_SEED)
    eval_images, eval_labels = shapes.make_classification(
        config.shapes_eval_size, image_size, SHAPES_EVAL_SEED)
    train_iter = arrays.train_iterator(
        train_images, train_labels, batch_size, seed, start_step,
        augment_fn=arrays.random_crop_flip(padding=4), **proc)
    eval_iter_fn = functools.partial(arrays.eval_iterator, eval_images,
                                     eval_labels, eval_batch_size, **proc)
    return ClassificationData(
        train_iter, eval_iter_fn, len(train_images), len(eval_images),
        num_classes, train_images.shape[1:])

  if config.dataset == 'synthetic':
    from jaxres.data import synthetic  # pylint: disable=g-import-not-at-top
    num_classes = config.get('num_classes') or 1000
    common = dict(image_size=image_size, num_classes=num_classes, dtype=dtype)
    train_iter = synthetic.synthetic_iterator(batch_size, seed=seed, **common)
    eval_iter_fn = functools.partial(
        synthetic.synthetic_iterator, eval_batch_size, seed=seed + 1,
        num_batches=synthetic.EVAL_BATCHES, with_mask=True, **common)
    return ClassificationData(
        train_iter, eval_iter_fn, synthetic.NUM_TRAIN_EXAMPLES,
        synthetic.EVAL_BATCHES * eval_batch_size * process_count, num_classes,
        (image_size, image_size, 3))

  if config.dataset == 'folder':
    from jaxres.data import folder  # pylint: disable=g-import-not-at-top
    data = folder.get_datasets(
        config, batch_size=batch_size, eval_batch_size=eval_batch_size,
        seed=seed, start_step=start_step, dtype=dtype, **proc)
    _check_num_classes(config, data.num_classes)
    return data

  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top
  builder = imagenet.get_builder(config.dataset, config.get('data_dir'))
  num_classes = _check_num_classes(config, imagenet.num_classes(builder))
  train_split, eval_split = imagenet.default_splits(builder)
  common = dict(image_size=image_size, dtype=dtype, **proc)
  train_iter = imagenet.train_iterator(
      builder, batch_size, seed=seed, start_step=start_step, split=train_split,
      shuffle_buffer=config.get('shuffle_buffer') or 16 * 1024, **common)
  eval_iter_fn = functools.partial(imagenet.eval_iterator, builder,
                                   eval_batch_size, split=eval_split, **common)
  return ClassificationData(
      train_iter, eval_iter_fn, imagenet.num_examples(builder, train_split),
      imagenet.num_examples(builder, eval_split), num_classes,
      (image_size, image_size, 3))
