"""Classification from image folders (torchvision ImageFolder layout).

  <data_dir>/train/<class_name>/<image>.jpg   (.jpeg .png .bmp .webp ... too)
  <data_dir>/val/<class_name>/<image>.jpg

Class ``i`` is the ``i``-th class folder name in sorted order, so both splits
must hold the same class folders (an extracted ILSVRC2012 with val sorted into
synset folders gives the usual 0..999 labels). Sub-folders of a class folder
are read too, symlinked ones included, each file once (a link into the split
folder or above it, e.g. a loop, is not followed); names starting with '.'
(``.ipynb_checkpoints``, macOS ``._*`` files) are not. No TensorFlow: images
are decoded with PIL on a thread pool, JPEGs in draft mode, i.e. at 1/2, 1/4
or 1/8 scale in the DCT when the crop still gets at least ``image_size``
pixels that way (several times cheaper for large photos).

Train: random-resized crop (area 8-100 % of the image, aspect 3/4-4/3 log-
uniform, 10 tries, else the eval centre window; torchvision's sampler, where
imagenet.py uses TF's), resized to ``train_image_size`` (None:
``image_size``; torchvision's --train-crop-size), random horizontal flip,
then ``config.augment`` / ``config.random_erasing`` if set (augment.py's
TensorFlow ops, called on each crop; TensorFlow is imported only then),
seeded by two integers drawn from the example's rng after the crop and flip.
Order, randomness, the split over processes and the eval padding are
batching.py's: step s is batch s % S of epoch s // S, epoch e
reads ``batching.epoch_permutation(n, seed, e)``, and example j of the global
batch at step s draws from rng (seed, 1, s, j). ``train_iter_fn(k)`` yields
what ``train_iter_fn(0)`` yields from its k-th batch on, and the processes'
rows concatenate to the one-process batch.

Eval: shorter side resized to ``image_size / crop_pct`` (config.eval_crop_pct,
default 0.875: 256 for 224), centre ``image_size`` crop, i.e. torchvision's
Resize(256) + CenterCrop(224) computed in one resize of the crop window.
Train and eval resizes use config.interpolation (default 'bilinear', or
'bicubic'). Global batch k holds examples
[k B, (k + 1) B) in file order, each process its contiguous slice; the last
batch is padded with mask 0, so every example is counted exactly once.

Unreadable files (config.on_bad_image): 'stop' raises BadImageError naming the
file; 'skip' logs and counts it, then takes the next example of the
permutation (train) or masks the slot (eval). The count and the first file
names are logged at each epoch boundary and after each eval pass.

Config fields: data_dir (the root folder), image_size, train_image_size,
batch_size and eval_batch_size (global), num_classes (None: the number of
class folders), augment, randaugment_n/m/mstd, random_erasing, eval_crop_pct,
interpolation.
Not declared in configs/common.py, read with defaults: train_split ('train'),
eval_split ('val'), input_dtype ('float32' | 'bfloat16'), on_bad_image
('stop'), data_workers (os.cpu_count()), prefetch_batches (2).
"""
import concurrent.futures
import io
import math
import os
from typing import Callable, Optional, Tuple, Union

import numpy as np
from PIL import Image

from jaxres import data as data_lib
from jaxres.data import augment as augment_lib
from jaxres.data import batching
from jaxres.data import image_folder
from jaxres.data.image_folder import ImageFolder, check_same_classes
from jaxres.data.errors import BadImageError

EVAL_CROP_FRACTION = 0.875  # Default image_size / resize side: 224 / 256.
INTERPOLATION = 'bilinear'  # Default for train and eval resizes.
_RESAMPLE = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
Box = Tuple[float, float, float, float]  # PIL (left, top, right, bottom).


# ----------------------------------------------------------------------------
# Crop windows and decoding.
# ----------------------------------------------------------------------------


def eval_window(height: int, width: int, image_size: int,
                crop_pct: Optional[float] = None) -> Box:
  """Resize-shorter-side-to-image_size/crop_pct + centre crop, source pixels.

  The same integer arithmetic as torchvision's Resize(r) and CenterCrop(s);
  crop_pct None is 0.875.
  """
  side = math.floor(image_size / (crop_pct or EVAL_CROP_FRACTION))
  if height <= width:
    new_h, new_w = side, int(side * width / height)
  else:
    new_h, new_w = int(side * height / width), side
  top = int(round((new_h - image_size) / 2.0))
  left = int(round((new_w - image_size) / 2.0))
  sy, sx = height / new_h, width / new_w
  return (left * sx, top * sy, (left + image_size) * sx,
          (top + image_size) * sy)


def random_window(height: int, width: int, rng: np.random.Generator,
                  image_size: int) -> Box:
  """Random-resized-crop window; the eval window if 10 tries all fail."""
  area = height * width
  log_aspect = np.log(ASPECT_RANGE)
  for _ in range(CROP_ATTEMPTS):
    target_area = area * rng.uniform(*AREA_RANGE)
    aspect = math.exp(rng.uniform(*log_aspect))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return (left, top, left + w, top + h)
  return eval_window(height, width, image_size)


def _draft(im: Image.Image, box: Box, image_size: int) -> float:
  """Lets a JPEG decode at the smallest DCT scale keeping the box >= image_size.

  Returns the factor from source to decoded pixel coordinates (1, 1/2, 1/4
  or 1/8).
  """
  if im.format != 'JPEG':
    return 1.0
  width, height = im.size
  box_w, box_h = box[2] - box[0], box[3] - box[1]
  wanted = (max(1, math.ceil(width * image_size / box_w)),
            max(1, math.ceil(height * image_size / box_h)))
  result = im.draft('RGB', wanted)
  if result is None:
    return 1.0
  return result[1][2] / width  # Decoded coordinates of the source width.


def _resample(interpolation: Optional[str]):
  interpolation = interpolation or INTERPOLATION
  if interpolation not in _RESAMPLE:
    raise ValueError(f'config.interpolation={interpolation!r} is not one of '
                     f'{tuple(_RESAMPLE)}.')
  return _RESAMPLE[interpolation]


def decode(path: Union[str, os.PathLike, bytes],
           window_fn: Callable[[int, int], Box],
           image_size: int, interpolation: Optional[str] = None) -> np.ndarray:
  """uint8 [image_size, image_size, 3]: window_fn(h, w) resized.

  ``path`` is a file name or the encoded bytes of the file; interpolation
  'bilinear' (None) or 'bicubic'. Raises BadImageError if PIL cannot read it.
  """
  resample = _resample(interpolation)
  source = io.BytesIO(path) if isinstance(path, bytes) else path
  what = 'image bytes' if isinstance(path, bytes) else f'image {path}'
  try:
    with Image.open(source) as im:
      width, height = im.size
      box = window_fn(height, width)
      scale = _draft(im, box, image_size)
      rgb = im if im.mode == 'RGB' else im.convert('RGB')
      out = rgb.resize((image_size, image_size), resample,
                       box=tuple(c * scale for c in box))
      return np.asarray(out)
  except _READ_ERRORS as e:
    raise BadImageError(f'Cannot read {what}: {e}') from e


def load_train(path: str, rng: np.random.Generator, image_size: int,
               interpolation: Optional[str] = None) -> np.ndarray:
  """Random-resized crop then a random flip, drawn from rng in that order."""
  image = decode(path, lambda h, w: random_window(h, w, rng, image_size),
                 image_size, interpolation)
  return image[:, ::-1] if rng.random() < 0.5 else image


def load_eval(path: str, image_size: int, crop_pct: Optional[float] = None,
              interpolation: Optional[str] = None) -> np.ndarray:
  return decode(path, lambda h, w: eval_window(h, w, image_size, crop_pct),
                image_size, interpolation)


# ----------------------------------------------------------------------------
# Entry point (config.dataset == 'folder').
# ----------------------------------------------------------------------------


def train_transform(image_size: int, augment=None,
                    interpolation: Optional[str] = None):
  """Crop, flip [, augment.Augment ``augment``], normalise."""
  augment_fn = None
  if augment is not None and augment.active:
    augment_fn = augment_lib.numpy_augment(augment)
    seed_from_rng = augment_lib.seed_from_rng

  def transform(example, rng, slot):
    path, label = example
    image = load_train(path, rng, image_size, interpolation)
    if augment_fn is None:
      data_lib.normalize_into(slot['image'], image)
    else:
      slot['image'] = augment_fn(image, seed_from_rng(rng))
    slot['label'] = label
  return transform


def eval_transform(image_size: int, crop_pct: Optional[float] = None,
                   interpolation: Optional[str] = None):
  def transform(example, slot):
    path, label = example
    data_lib.normalize_into(slot['image'],
                            load_eval(path, image_size, crop_pct,
                                      interpolation))
    slot['label'] = label
  return transform


def get_datasets(config, *, seed: int, process_index: int,
                 process_count: int,
                 dtype='float32') -> data_lib.ClassificationData:
  """Lists and checks both splits; batch sizes are GLOBAL."""
  root = config.data_dir
  train_split = config.train_split or 'train'
  eval_split = config.eval_split or 'val'
  layout = image_folder.layout_help(root, train_split, eval_split)
  pool = concurrent.futures.ThreadPoolExecutor(
      config.data_workers or os.cpu_count(),
      thread_name_prefix='folder-data')
  train = ImageFolder(root, train_split, layout=layout, pool=pool)
  evals = ImageFolder(root, eval_split, layout=layout, pool=pool)
  check_same_classes(train, evals)

  on_bad_image = config.on_bad_image
  bad_images = batching.BadImageLog()
  size = config.image_size
  train_size = data_lib.train_image_size(config)
  augment = augment_lib.Augment.from_config(config)
  crop_pct = config.get('eval_crop_pct')
  interpolation = config.get('interpolation')

  def fields(side):
    return dict(image=((side, side, 3), batching.np_dtype(dtype), 0),
                label=((), np.int32, 0))

  common = dict(process_index=process_index, process_count=process_count,
                pool=pool, prefetch=config.prefetch_batches)
  train_iter_fn = batching.TrainBatches(
      batching.Reader(train, train.split, on_bad_image, bad_images,
                      where=train.folder),
      train_transform(train_size, augment, interpolation),
      batch_size=config.batch_size, seed=seed, fields=fields(train_size),
      **common)
  eval_iter_fn = batching.EvalBatches(
      batching.Reader(evals, evals.split, on_bad_image, bad_images,
                      where=evals.folder),
      eval_transform(size, crop_pct, interpolation),
      batch_size=config.eval_batch_size or config.batch_size,
      fields=fields(size), **common)
  return data_lib.ClassificationData(
      train_iter_fn=train_iter_fn,
      eval_iter_fn=eval_iter_fn,
      num_train_examples=len(train),
      num_eval_examples=len(evals),
      num_classes=train.num_classes,
      image_shape=(size, size, 3),
      class_names=train.class_names)
