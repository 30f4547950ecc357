"""TFDS classification pipeline (ImageNet-style) with deterministic order.

Works for any prepared TFDS builder with 'image' and 'label' features
(imagenet2012, imagenette, cifar10, ...). TensorFlow and TFDS are imported
inside the functions, so importing this module is cheap.

Train: ``preprocess_for_train`` (Inception-style crop decoded as a window,
flip, resize, normalise), stateless in a per-record seed; the reading, order,
resume and split between processes ('shards' / 'stream') are in
tfds_train.py.

Augmentation (``augment``, an ``augment.Augment``; none by default): after
crop, resize and flip, a policy (RandAugment, TrivialAugmentWide,
AutoAugment) on the uint8 image and random erasing after normalisation, all
stateless in a seed folded from the record's (epoch seed, position), so
exact resume and the 'stream' order hold as they do for the crop.

Eval: centre crop of ``crop_pct`` of the shorter side (default
image_size / (image_size + 32): 224/256 at 224) decoded with a fused crop and
resized to image_size, i.e. resize the shorter side to image_size / crop_pct
then centre crop; batches padded with ``mask`` 0 so each example is counted
exactly once and every process yields the same number of batches. Resizes
(train and eval) are ``interpolation``: 'bicubic' (default) or 'bilinear'.
The two sides may differ: get_classification_datasets gives the train
iterator config.train_image_size (when set) and the eval iterator
config.image_size, as torchvision's --train-crop-size / --val-crop-size.
"""
import functools
from typing import Iterator, Optional, Sequence, Tuple


from jaxres import data as data_lib
from jaxres.data import augment as augment_lib
from jaxres.data import batching

CROP_PADDING = 32  # Eval default: centre crop image_size / (image_size + 32).
INTERPOLATION = 'bicubic'  # Default for train and eval resizes.
AUGMENT_SEED = 1  # Folded into a record's seed for its augmentation.


@functools.lru_cache(maxsize=None)
def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    # TensorFlow only feeds the host; keep it off the accelerators.
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # Devices already initialised.
    pass
  return tf


@functools.lru_cache(maxsize=None)
def _tfds():
  _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


# ----------------------------------------------------------------------------
# Builder, splits and sizes.
# ----------------------------------------------------------------------------


def _not_prepared_message(builder) -> str:
  root = builder.data_dir_root
  lines = [
      f'TFDS dataset {builder.name!r} is not prepared under {root} '
      f'(expected {builder.data_dir}). jaxres never downloads datasets.'
  ]
  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if instructions:
    manual_dir = f'{root}/downloads/manual'
    files = (' (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)'
             if builder.name.startswith('imagenet2012') else '')
    lines += [
        f'It needs a manual download: put the files in {manual_dir}/'
        f'{files}, then prepare it with',
        f'  tfds build {builder.name} --data_dir={root} '
        f'--manual_dir={manual_dir}',
        'TFDS instructions: ' + ' '.join(instructions.split()),
    ]
  else:
    lines.append('Prepare it on a machine with network access with '
                 f'`tfds build {builder.name} --data_dir={root}` and copy '
                 'the folder here, or point config.data_dir at it.')
  return '\n'.join(lines)


def get_builder(dataset: str, data_dir: Optional[str] = None):
  """Returns the prepared TFDS builder, or raises DatasetNotFoundError."""
  tfds = _tfds()
  try:
    builder = tfds.builder(dataset, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f'Unknown dataset {dataset!r}: config.dataset must be "shapes", '
        '"synthetic" or a TFDS builder name (e.g. "imagenet2012").') from e
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise ValueError(f'TFDS dataset {dataset!r} has features '
                     f'{list(features)}; a classification dataset needs '
                     "'image' and 'label'.")
  try:
    # Only builds the reading graph; fails fast if nothing was prepared.
    builder.as_dataset(split=default_splits(builder)[0])
  except AssertionError as e:
    if builder.is_prepared():
      raise
    raise data_lib.DatasetNotFoundError(_not_prepared_message(builder)) from e
  return builder


def default_splits(builder) -> Tuple[str, str]:
  """('train', 'validation'), or 'test' for eval when there is no validation."""
  splits = builder.info.splits
  eval_split = 'test' if 'validation' not in splits and 'test' in splits else (
      'validation')
  return 'train', eval_split


def num_classes(builder) -> int:
  return builder.info.features['label'].num_classes


def class_names(builder) -> Tuple[str, ...]:
  """The label feature's names, else '0', '1', ..."""
  label = builder.info.features['label']
  names = getattr(label, 'names', None)
  if names:
    return tuple(str(n) for n in names)
  return tuple(str(i) for i in range(num_classes(builder)))


def num_examples(builder, split) -> int:
  """Examples in ``split`` (sub-splits such as 'train[:50%]' included)."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    # Mocked builders (tfds.testing.mock_data) have no split metadata.
    cardinality = int(builder.as_dataset(split=split).cardinality())
    if cardinality < 0:
      raise ValueError(f'Cannot count the examples of {split!r}.') from None
    return cardinality


def is_jpeg(builder) -> bool:
  return builder.info.features['image'].encoding_format == 'jpeg'


# ----------------------------------------------------------------------------
# Decoding and augmentation.
# ----------------------------------------------------------------------------


def _decode_window(image_bytes, window_fn, is_jpeg):
  """Decodes the crop ``window_fn(shape) -> [y, x, h, w]`` as uint8 RGB."""
  tf = _tf()
  if is_jpeg:
    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = window_fn(shape)
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  window = window_fn(tf.shape(image))
  return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])


def default_crop_pct(image_size: int) -> float:
  return image_size / (image_size + CROP_PADDING)


def _center_window(shape, image_size, crop_pct: Optional[float] = None):
  """Centre square of crop_pct of the shorter side (default 224/256)."""
  tf = _tf()
  height, width = shape[0], shape[1]
  if crop_pct is None:
    crop_pct = default_crop_pct(image_size)
  crop = tf.cast(
      crop_pct * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  offset_y = (height - crop + 1) // 2
  offset_x = (width - crop + 1) // 2
  return tf.stack([offset_y, offset_x, crop, crop])


def _random_window(shape, seed, image_size):
  """Inception crop: area 8-100 %, aspect 3/4-4/3, 10 tries, else centre."""
  tf = _tf()
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  # When every try fails the sampler returns the whole image.
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  return tf.where(failed, _center_window(shape, image_size), window)


def _resize_method(interpolation: Optional[str]):
  interpolation = interpolation or INTERPOLATION
  if interpolation not in augment_lib.INTERPOLATIONS:
    raise ValueError(f'config.interpolation={interpolation!r} is not one of '
                     f'{augment_lib.INTERPOLATIONS}.')
  return interpolation


def _finish(image, image_size, dtype, interpolation=None, augment=None,
            seed=None):
  """Resize, clip, [augment,] normalise, cast.

  The uint8 crop is cast to float32 before the resize (TensorFlow's resize
  kernels read float32 faster; uint8 -> float32 is exact, so the result is
  the same bits); augment.normalize subtracts and divides by whole
  [S, S, 3] mean and std planes (about 40 % of the pipeline's time here
  when it broadcast [1, 1, 3]).
  """
  tf = _tf()
  image = tf.image.resize([tf.cast(image, tf.float32)],
                          [image_size, image_size],
                          method=_resize_method(interpolation))[0]
  image = tf.clip_by_value(image, 0.0, 255.0)
  if augment is not None and augment.active:
    image = augment_lib.augment_and_normalize(tf.round(image), seed, augment)
  else:
    image = augment_lib.normalize(image)
  return tf.cast(image, dtype)


def preprocess_for_train(image_bytes, seed, image_size: int = 224,
                         dtype='float32', is_jpeg: bool = True,
                         augment=None, interpolation: Optional[str] = None):
  """Random-size crop, flip [and ``augment``], stateless in ``seed``.

  ``seed``: int [2] tensor. The crop and flip seeds do not depend on
  ``augment``, whose seed is ``seed`` folded with AUGMENT_SEED.
  """
  tf = _tf()
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = _decode_window(
      image_bytes, lambda shape: _random_window(shape, crop_seed, image_size),
      is_jpeg)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  augment_seed = tf.random.experimental.stateless_fold_in(seed, AUGMENT_SEED)
  return _finish(image, image_size, dtype, interpolation, augment,
                 augment_seed)


def preprocess_for_eval(image_bytes, image_size: int = 224, dtype='float32',
                        is_jpeg: bool = True, crop_pct: Optional[float] = None,
                        interpolation: Optional[str] = None):
  """Centre crop_pct of the shorter side, resized to ``image_size``."""
  image = _decode_window(
      image_bytes, lambda shape: _center_window(shape, image_size, crop_pct),
      is_jpeg)
  return _finish(image, image_size, dtype, interpolation)


# ----------------------------------------------------------------------------
# Iterators.
# ----------------------------------------------------------------------------


def dataset_options():
  tf = _tf()
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def tf_dtype(dtype):
  tf = _tf()
  return tf.bfloat16 if dtype in ('bfloat16', 'bf16') else tf.as_dtype(dtype)


def process_splits(split, process_count, drop_remainder) -> Sequence:
  if process_count == 1:
    return [split]
  return _tfds().even_splits(split, n=process_count,
                             drop_remainder=drop_remainder)


def eval_iterator(builder,
                  batch_size: int,
                  *,
                  process_index: int = 0,
                  process_count: int = 1,
                  image_size: int = 224,
                  dtype='float32',
                  split: str = 'validation',
                  crop_pct: Optional[float] = None,
                  interpolation: Optional[str] = None) -> Iterator[dict]:
  """One pass over ``split``: padded batches with ``mask`` (1 real, 0 pad).

  ``batch_size`` is GLOBAL; each process reads its own part of the split in
  batches of ``batch_size // process_count``. Every process yields
  ``ceil(max part size / (batch_size // process_count))`` batches, so a
  jitted eval step runs the same number of times everywhere. ``crop_pct``
  (None: image_size / (image_size + 32)) and ``interpolation`` (None:
  'bicubic') set the resize.
  """
  tf, tfds = _tf(), _tfds()
  batch_size = batching.per_process(batch_size, process_count,
                                    'eval_batch_size')
  dtype = tf_dtype(dtype)
  jpeg = is_jpeg(builder)
  splits = process_splits(split, process_count, False)
  counts = [num_examples(builder, s) for s in splits]
  num_batches = -(-max(counts) // batch_size)
  ds = builder.as_dataset(
      split=splits[process_index],
      shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(options=dataset_options()))

  def preprocess(example):
    return dict(
        image=preprocess_for_eval(example['image'], image_size, dtype,
                                  jpeg, crop_pct, interpolation),
        label=tf.cast(example['label'], tf.int32),
        mask=tf.constant(1.0, tf.float32))

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  padding = dict(
      image=tf.zeros([image_size, image_size, 3], dtype),
      label=tf.constant(0, tf.int32),
      mask=tf.constant(0.0, tf.float32))
  num_padding = num_batches * batch_size - counts[process_index]
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(dataset_options())
  return iter(tfds.as_numpy(ds))
