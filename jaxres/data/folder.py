"""Classification from image folders (torchvision ImageFolder layout).

  <data_dir>/train/<class_name>/<image>.jpg   (.jpeg .png .bmp .webp ... too)
  <data_dir>/val/<class_name>/<image>.jpg

Class ``i`` is the ``i``-th class folder name in sorted order, so both splits
must hold the same class folders (an extracted ILSVRC2012 with val sorted into
synset folders gives the usual 0..999 labels). Sub-folders of a class folder
are read too; names starting with '.' (``.ipynb_checkpoints``, macOS ``._*``
files) are not. No TensorFlow: images are decoded with PIL on a thread pool,
JPEGs in draft mode, i.e. at 1/2, 1/4 or 1/8 scale in the DCT when the crop
still gets at least ``image_size`` pixels that way (several times cheaper for
large photos).

Train: random-resized crop (area 8-100 % of the image, aspect 3/4-4/3 log-
uniform, 10 tries, else the eval centre window; torchvision's sampler, where
imagenet.py uses TF's), resized bilinearly to ``image_size``, random
horizontal flip. Order and randomness follow arrays.py: step s is batch s % S
of epoch s // S, epoch e reads ``arrays.epoch_permutation(n, seed, e)``, and
example j of the global batch at step s draws from rng (seed, 1, s, j). An
iterator made with start_step=k yields what a fresh one yields from its k-th
batch on, and the processes' slices concatenate to the one-process batch.

Eval: shorter side resized (bilinear) to ``image_size / 0.875`` (256 for 224),
centre ``image_size`` crop, i.e. torchvision's Resize(256) + CenterCrop(224)
computed in one resize of the crop window. Global batch k holds examples
[k B, (k + 1) B) in file order, each process its contiguous slice; the last
batch is padded with mask 0, so every example is counted exactly once.

Unreadable files (config.on_bad_image): 'stop' raises BadImageError naming the
file; 'skip' logs and counts it, then takes the next example of the
permutation (train) or masks the slot (eval). The count and the first file
names are logged at each epoch boundary and after each eval pass.

Config fields (config.get: a missing field takes the default):
  data_dir: the root folder. train_split ('train'), eval_split ('val').
  image_size, batch_size, eval_batch_size (global), num_classes (None: the
    number of class folders), input_dtype ('float32' | 'bfloat16').
  on_bad_image ('stop'), data_workers (os.cpu_count()), prefetch_batches (2).
"""
import concurrent.futures
import functools
import math
import os
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import ml_dtypes
import numpy as np
from PIL import Image

from jaxres import data as data_lib
from jaxres.data import arrays
from jaxres.data import segmentation
from jaxres.data.segmentation import BadImageError
from jaxres.data.segmentation import BadImageLog
from jaxres.data.segmentation import LabelError

# torchvision's IMG_EXTENSIONS, compared case-insensitively.
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff',
              '.webp')
EVAL_CROP_FRACTION = 0.875  # image_size / resize side: 224 / 256.
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
_AUGMENT_STREAM = 1  # As arrays.py: rng (seed, 1, step, j).
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_LIST_LIMIT = 10  # Names shown in messages.

Box = Tuple[float, float, float, float]  # PIL (left, top, right, bottom).


class FolderLayoutError(LabelError):
  """The folders do not form a dataset; the message says what to change.

  A LabelError, so jaxres.runner reports it without a traceback.
  """


def _first(names: Sequence[str], limit: int = _LIST_LIMIT) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f', ... ({len(names) - limit} more)'
                  if len(names) > limit else '')


def _layout(root: str, train_split: str, eval_split: str) -> str:
  return ('Expected an image folder (torchvision ImageFolder layout), with '
          'class = sorted class folder names:\n'
          f'  {root}/{train_split}/<class_name>/<image>.jpg\n'
          f'  {root}/{eval_split}/<class_name>/<image>.jpg\n'
          'Set config.data_dir to the root and config.train_split / '
          'config.eval_split to the split folder names.')


# ----------------------------------------------------------------------------
# Listing.
# ----------------------------------------------------------------------------


def _is_image(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTS)


def _list_images(folder: str) -> List[str]:
  """Image paths under folder (recursively), sorted as torchvision does."""
  paths = []
  for dirpath, dirnames, filenames in sorted(os.walk(folder,
                                                     followlinks=True)):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    paths += [os.path.join(dirpath, f) for f in sorted(filenames)
              if _is_image(f)]
  return paths


class ImageFolder:
  """The file list of one split: ``paths``, int32 ``labels``, ``class_names``.

  Raises DatasetNotFoundError if the split folder is missing or holds no
  images; class folders without images are kept (their index stays taken)
  and listed in ``empty_classes`` and the log.
  """

  def __init__(self, root: Optional[str], split: str, *, layout: str = '',
               pool: Optional[concurrent.futures.Executor] = None):
    self.split = split
    layout = layout or _layout(root, split, split)
    if not root:
      raise data_lib.DatasetNotFoundError(
          'config.data_dir must name the root of the image folder dataset.\n'
          + layout)
    if not os.path.isdir(root):
      raise data_lib.DatasetNotFoundError(
          f'Image folder root {root} does not exist.\n' + layout)
    self.folder = os.path.join(root, split)
    if not os.path.isdir(self.folder):
      found = sorted(e.name for e in os.scandir(root)
                     if e.is_dir() and not e.name.startswith('.'))
      raise data_lib.DatasetNotFoundError(
          f'Split folder {self.folder} not found; folders in {root}: '
          f'{found or "none"}.\n' + layout)

    entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
    self.class_names = tuple(e.name for e in entries
                             if e.is_dir() and not e.name.startswith('.'))
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if not self.class_names:
      if loose:
        raise data_lib.DatasetNotFoundError(
            f'{self.folder} holds {len(loose)} images but no class folders: '
            'each image must sit in the folder of its class (ImageNet val, '
            'for one, comes flat and must first be sorted into its 1000 '
            'synset folders).\n' + layout)
      raise data_lib.DatasetNotFoundError(
          f'{self.folder} holds no class folders.\n' + layout)
    if loose:
      logging.warning('%s: %d images outside the class folders are ignored '
                      '(%s).', self.folder, len(loose), _first(loose, 3))

    map_fn = pool.map if pool is not None else map
    class_dirs = [os.path.join(self.folder, c) for c in self.class_names]
    per_class = list(map_fn(_list_images, class_dirs))
    self.paths = [p for paths in per_class for p in paths]
    self.labels = np.repeat(np.arange(len(per_class), dtype=np.int32),
                            [len(paths) for paths in per_class])
    self.empty_classes = tuple(
        c for c, paths in zip(self.class_names, per_class) if not paths)
    if not self.paths:
      raise data_lib.DatasetNotFoundError(
          f'The {len(self.class_names)} class folders of {self.folder} hold '
          f'no images (extensions {", ".join(IMAGE_EXTS)}).\n' + layout)
    if self.empty_classes:
      logging.warning(
          '%s: %d of %d class folders hold no images (their labels stay '
          'reserved): %s', self.folder, len(self.empty_classes),
          len(self.class_names), _first(self.empty_classes))
    logging.info('%s: %d images in %d classes.', self.folder, len(self.paths),
                 len(self.class_names))

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def check_same_classes(train: ImageFolder, evals: ImageFolder) -> None:
  """Raises FolderLayoutError unless both splits have the same class folders."""
  if train.class_names == evals.class_names:
    return
  only_train = sorted(set(train.class_names) - set(evals.class_names))
  only_eval = sorted(set(evals.class_names) - set(train.class_names))
  raise FolderLayoutError(
      f'The class folders of {train.folder} ({train.num_classes}) and '
      f'{evals.folder} ({evals.num_classes}) differ, so their class indices '
      '(positions in the sorted folder names) would not agree.\n'
      f'  only in {train.split!r} ({len(only_train)}): '
      f'{_first(only_train) or "-"}\n'
      f'  only in {evals.split!r} ({len(only_eval)}): '
      f'{_first(only_eval) or "-"}\n'
      'Give both splits the same class folders (an empty folder is fine for '
      'a class without examples).')


# ----------------------------------------------------------------------------
# Crop windows and decoding.
# ----------------------------------------------------------------------------


def eval_window(height: int, width: int, image_size: int) -> Box:
  """Resize-shorter-side-to-image_size/0.875 + centre crop, in source pixels.

  The same integer arithmetic as torchvision's Resize(r) and CenterCrop(s).
  """
  side = math.floor(image_size / EVAL_CROP_FRACTION)
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


def decode(path: str, window_fn: Callable[[int, int], Box],
           image_size: int) -> np.ndarray:
  """uint8 [image_size, image_size, 3]: window_fn(h, w) resized bilinearly.

  Raises BadImageError if PIL cannot read the file.
  """
  try:
    with Image.open(path) as im:
      width, height = im.size
      box = window_fn(height, width)
      scale = _draft(im, box, image_size)
      rgb = im if im.mode == 'RGB' else im.convert('RGB')
      out = rgb.resize((image_size, image_size), Image.BILINEAR,
                       box=tuple(c * scale for c in box))
      return np.asarray(out)
  except _READ_ERRORS as e:
    raise BadImageError(f'Cannot read image {path}: {e}') from e


def load_train(path: str, rng: np.random.Generator,
               image_size: int) -> np.ndarray:
  """Random-resized crop then a random flip, drawn from rng in that order."""
  image = decode(path, lambda h, w: random_window(h, w, rng, image_size),
                 image_size)
  return image[:, ::-1] if rng.random() < 0.5 else image


def load_eval(path: str, image_size: int) -> np.ndarray:
  return decode(path, lambda h, w: eval_window(h, w, image_size), image_size)


# ----------------------------------------------------------------------------
# Iterators.
# ----------------------------------------------------------------------------


class _Reader:
  """Applies config.on_bad_image around one split's loads."""

  def __init__(self, folder: ImageFolder, on_bad_image: str,
               bad_images: BadImageLog):
    if on_bad_image not in ('skip', 'stop'):
      raise FolderLayoutError('config.on_bad_image must be "skip" or "stop", '
                              f'got {on_bad_image!r}.')
    self.folder, self.on_bad_image, self.bad_images = (folder, on_bad_image,
                                                       bad_images)

  def read(self, index: int, load: Callable[[str], np.ndarray]):
    """load(path), or None if the file is unreadable and skipped."""
    split = self.folder.split
    if self.bad_images.is_bad(split, index):
      return None
    path = self.folder.paths[index]
    try:
      return load(path)
    except BadImageError as e:
      if self.on_bad_image == 'stop':
        raise BadImageError(
            f'{e}\nSet config.on_bad_image="skip" to count and skip '
            'unreadable files instead of stopping.') from e
      self.bad_images.add(split, index, path, str(e))
      return None

  def log_count(self, when: str) -> None:
    if self.bad_images.count:
      logging.warning('%s: %d unreadable image files skipped so far: %s',
                      when, self.bad_images.count,
                      _first(list(self.bad_images.files), 5))


def _np_dtype(dtype) -> np.dtype:
  if dtype in ('bfloat16', 'bf16'):
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(dtype)


def train_iterator(reader: _Reader, batch_size: int, *, seed: int,
                   start_step: int = 0, image_size: int, pool,
                   process_index: int = 0, process_count: int = 1,
                   dtype='float32', prefetch: int = 2) -> Iterator[dict]:
  """This process's training batches forever, from start_step on.

  batch_size is PER PROCESS; the global batch is batch_size * process_count.
  A skipped file is replaced by the next example of the permutation, decoded
  with a fresh rng (seed, 1, step, j), so the batch does not depend on
  whether the file was already known to be bad.
  """
  folder = reader.folder
  n = len(folder)
  global_batch = batch_size * process_count
  per_epoch = arrays.steps_per_epoch(n, global_batch)
  if per_epoch < 1:
    raise FolderLayoutError(
        f'{folder.folder} holds {n} images, fewer than the global batch size '
        f'{global_batch}; lower config.batch_size.')
  offset = process_index * batch_size
  dtype = _np_dtype(dtype)
  cache = {}

  def permutation(epoch):
    if epoch not in cache:
      cache.clear()
      cache[epoch] = arrays.epoch_permutation(n, seed, epoch)
    return cache[epoch]

  def example(step, j, perm, batch, i):
    pos = (step % per_epoch) * global_batch + j
    for k in range(n):
      index = int(perm[(pos + k) % n])
      rng = np.random.default_rng([seed, _AUGMENT_STREAM, step, j])
      image = reader.read(index, functools.partial(
          load_train, rng=rng, image_size=image_size))
      if image is not None:
        break
    else:
      raise BadImageError(f'No readable image in {folder.folder}.')
    batch['image'][i] = data_lib.normalize(image)
    batch['label'][i] = folder.labels[index]

  def make_batch(step):
    if step % per_epoch == 0 and step != start_step:
      reader.log_count(f'Start of epoch {step // per_epoch}')
    batch = dict(
        image=np.empty((batch_size, image_size, image_size, 3), dtype),
        label=np.empty((batch_size,), np.int32))
    perm = permutation(step // per_epoch)
    futures = [pool.submit(example, step, offset + i, perm, batch, i)
               for i in range(batch_size)]
    return batch, futures

  # pylint: disable-next=protected-access
  return segmentation._batches(make_batch, start_step, None, prefetch)


def eval_iterator(reader: _Reader, batch_size: int, *, image_size: int,
                  pool, process_index: int = 0, process_count: int = 1,
                  dtype='float32', prefetch: int = 2) -> Iterator[dict]:
  """One pass: every example in exactly one slot with mask 1, padding mask 0.

  All processes yield ceil(n / (batch_size * process_count)) batches.
  """
  folder = reader.folder
  n = len(folder)
  global_batch = batch_size * process_count
  dtype = _np_dtype(dtype)

  def example(index, batch, i):
    image = reader.read(index, lambda p: load_eval(p, image_size))
    if image is not None:
      batch['image'][i] = data_lib.normalize(image)
      batch['label'][i] = folder.labels[index]
      batch['mask'][i] = 1.0

  def make_batch(k):
    batch = dict(
        image=np.zeros((batch_size, image_size, image_size, 3), dtype),
        label=np.zeros((batch_size,), np.int32),
        mask=np.zeros((batch_size,), np.float32))
    start = k * global_batch + process_index * batch_size
    futures = [pool.submit(example, start + i, batch, i)
               for i in range(min(batch_size, max(n - start, 0)))]
    return batch, futures

  num_batches = -(-n // global_batch)
  # pylint: disable-next=protected-access
  yield from segmentation._batches(make_batch, 0, num_batches, prefetch)
  reader.log_count(f'Eval pass over {folder.folder}')


# ----------------------------------------------------------------------------
# Entry point (config.dataset == 'folder').
# ----------------------------------------------------------------------------


def get_datasets(config, *, batch_size: int, eval_batch_size: int, seed: int,
                 start_step: int, process_index: int, process_count: int,
                 dtype='float32') -> data_lib.ClassificationData:
  """Lists and checks both splits; batch sizes are PER PROCESS here."""
  root = config.get('data_dir')
  train_split = config.get('train_split') or 'train'
  eval_split = config.get('eval_split') or 'val'
  layout = _layout(root, train_split, eval_split)
  pool = concurrent.futures.ThreadPoolExecutor(
      config.get('data_workers') or os.cpu_count(),
      thread_name_prefix='folder-data')
  train = ImageFolder(root, train_split, layout=layout, pool=pool)
  evals = ImageFolder(root, eval_split, layout=layout, pool=pool)
  check_same_classes(train, evals)

  on_bad_image = config.get('on_bad_image', 'stop')
  bad_images = BadImageLog()
  common = dict(image_size=config.image_size, pool=pool,
                process_index=process_index, process_count=process_count,
                dtype=dtype, prefetch=config.get('prefetch_batches', 2))
  train_iter = train_iterator(_Reader(train, on_bad_image, bad_images),
                              batch_size, seed=seed, start_step=start_step,
                              **common)
  eval_reader = _Reader(evals, on_bad_image, bad_images)
  return data_lib.ClassificationData(
      train_iter=train_iter,
      eval_iter_fn=lambda: eval_iterator(eval_reader, eval_batch_size,
                                         **common),
      num_train_examples=len(train),
      num_eval_examples=len(evals),
      num_classes=train.num_classes,
      image_shape=(config.image_size, config.image_size, 3))
