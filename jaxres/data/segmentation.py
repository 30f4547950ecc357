"""Semantic segmentation input pipelines: one numpy/PIL augmentation for all.

Every source (the embedded shapes, VOC-style folders, TFDS cityscapes and
oxford_iiit_pet) hands this module uint8 images [H, W, 3] and uint8 class-index
labels [H, W] (255 = ignore); augmentation, batching, sharding and the label
checks live here, so every dataset behaves the same. Work runs on a thread pool
(PIL and numpy release the GIL), so TensorFlow is never on the hot path.

  data = get_segmentation_datasets(config, seed=0, start_step=0,
                                   process_index=0, process_count=1)
  batch = next(data.train_iter)      # image [b, crop, crop, 3], label [b, ...]
  for batch in data.eval_iter_fn():  # + mask [b], label_hw [b, 2]
    ...

Training batches are a pure function of (seed, step), in the order of
arrays.train_iterator: epoch e reads a permutation drawn from (seed, e) in
global batches (remainder dropped), and the augmentation of the j-th example of
the global batch at step t draws from (seed, t, j). An iterator made with
start_step=k yields exactly what a fresh one yields from its k-th batch on, and
the processes' slices of a global batch concatenate to the one-process batch.

Batches (per process; b = global batch / process_count):
  train: image float32 [b, ch, cw, 3] (ImageNet-normalised), label int32
    [b, ch, cw] with 255 where ignored or padded.
  eval: image float32 [b, H, W, 3], label int32 [b, Hl, Wl] (255 padded),
    mask float32 [b] (0 = padding example), label_hw int32 [b, 2] (the valid
    label size). With eval_size None, images are full resolution, padded at the
    bottom/right with 0 (the mean) to the eval set's largest size rounded up to
    eval_pad_multiple, and H, W = Hl, Wl. With eval_size (h, w), images are
    resized to it and labels stay at their original size: resize the logits of
    example i to label_hw[i] (e.g. jax.image.scale_and_translate with scale
    label_hw / eval_size into the padded [Hl, Wl] grid) before scoring.

Config fields read (config.get, so a missing field takes the default):
  dataset: 'shapes_seg' | 'voc' | 'cityscapes' | 'oxford_iiit_pet'.
  data_dir: the VOC-style root for 'voc'; the TFDS data_dir for TFDS sources
    (None: the TFDS default).
  train_split, eval_split: None picks the source's usual splits (voc
    train/val, cityscapes train/validation, oxford_iiit_pet train/test).
  num_classes: classes including background; required for 'voc', checked
    against the source otherwise.
  crop_size (512): training crop, int or (h, w).
  scale_range ((0.5, 2.0)): random rescale factor range for training.
  eval_size (None): None = full resolution, else int or (h, w).
  eval_pad_multiple (32): full-resolution eval pads to a multiple of this.
  batch_size, eval_batch_size: global batch sizes (eval defaults to batch_size).
  binary_mask_255_to_1 (False): read 0/255 masks as 0/1 (VOC folders).
  on_bad_image ('stop'): 'stop' raises on an unreadable file, 'skip' counts it
    and uses the next example of the permutation (train) or masks it (eval).
  data_workers (8): decoding/augmentation threads.
  prefetch_batches (2): batches prepared ahead of the consumer.
  label_check_files (300): masks scanned at start-up per split (all of them if
    there are fewer); every loaded mask is checked again on the fly.
  VOC layout: voc_image_dir ('JPEGImages'), voc_mask_dir (None:
    SegmentationClass if it holds every id of the split, else
    SegmentationClassAug), voc_split_dir ('ImageSets/Segmentation'),
    voc_image_ext (None: any of .jpg .jpeg .png .bmp), voc_mask_ext ('.png'),
    class_names (None: VOC names for 21 classes).
  oxford_iiit_pet: pets_border ('ignore' | 'background' | 'pet' | 'class').
  shapes_seg: image_size (64), shapes_train_size (1000), shapes_eval_size (200).
"""
import collections
import concurrent.futures
import dataclasses
import threading
from typing import Callable, Dict, Iterator, Optional, Protocol, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image

from jaxres import data as data_lib
from jaxres.data import arrays
from jaxres.data import IGNORE_LABEL
from jaxres.data import MEAN_RGB
from jaxres.data import STDDEV_RGB

_MEAN_255 = np.asarray(MEAN_RGB, np.float32)
_STD_255 = np.asarray(STDDEV_RGB, np.float32)
_AUGMENT_STREAM = 1  # As in arrays.py: rng (seed, 1, step, j).


# ----------------------------------------------------------------------------
# Errors and label checks.
# ----------------------------------------------------------------------------


class LabelError(ValueError):
  """The segmentation data and the config disagree; the message says the fix.

  Raised for masks (values, sizes, 0/255 binaries), missing files or splits and
  inconsistent data fields of the config; jaxres.runner reports it without a
  traceback.
  """


class BadImageError(LabelError):
  """A file could not be decoded (counted or fatal, per config.on_bad_image)."""


class Source(Protocol):
  """Random access to one split; images uint8 [H, W, 3], labels uint8 [H, W]."""

  def __len__(self) -> int:
    ...

  def name(self, index: int) -> str:
    """What to call example ``index`` in messages (a file name or an id)."""

  def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """Image and class-index label; raises BadImageError if undecodable."""

  def load_label(self, index: int) -> np.ndarray:
    """The label alone (start-up scans)."""

  def image_size(self, index: int) -> Tuple[int, int]:
    """(height, width) of the image, cheaply (a header read)."""


def _fmt_files(by_file: Dict[str, Sequence[int]], limit: int = 10) -> str:
  lines = [f'  {name}: values {list(values)}'
           for name, values in list(by_file.items())[:limit]]
  if len(by_file) > limit:
    lines.append(f'  ... and {len(by_file) - limit} more files')
  return '\n'.join(lines)


def out_of_range_error(by_file: Dict[str, Sequence[int]], num_classes: int,
                       split: str) -> LabelError:
  values = sorted({int(v) for vs in by_file.values() for v in vs})
  return LabelError(
      f'Masks of split {split!r} hold values >= num_classes={num_classes} '
      f'that are not the ignore label {IGNORE_LABEL}: {values}.\n'
      f'{_fmt_files(by_file)}\n'
      f'If these are real classes, set config.num_classes={max(values) + 1} '
      '(classes are 0..num_classes-1 with 0 = background). If they mark pixels '
      f'to ignore, store them as {IGNORE_LABEL} in the masks. Masks must hold '
      'class indices (a palette or grayscale PNG), not colours.')


def binary_mask_error(num_masks: int, split: str) -> LabelError:
  return LabelError(
      f'All {num_masks} masks scanned in split {split!r} contain only the '
      'values 0 and 255: these look like binary masks saved as black/white '
      'images, not class indices. As they are, 255 is the ignore label and '
      'the model would learn background only. Set '
      'config.binary_mask_255_to_1=True to read 255 as class 1 (with '
      'config.num_classes=2), or re-save the masks with class indices.')


def check_label(label: np.ndarray, num_classes: int, name: str,
                image_hw: Optional[Tuple[int, int]], split: str) -> None:
  """Raises LabelError for a size mismatch or out-of-range values."""
  if image_hw is not None and tuple(label.shape) != tuple(image_hw):
    raise LabelError(
        f'{name}: the mask is {label.shape[0]}x{label.shape[1]} (HxW) but the '
        f'image is {image_hw[0]}x{image_hw[1]}; masks must have the size of '
        'their image. Re-save this mask at the image size (nearest-neighbour).')
  bad = (label >= num_classes) & (label != IGNORE_LABEL)
  if bad.any():
    raise out_of_range_error({name: np.unique(label[bad]).tolist()},
                             num_classes, split)


class BadImageLog:
  """Thread-safe record of unreadable files, for the 'skip' policy."""

  def __init__(self):
    self._lock = threading.Lock()
    self.files: Dict[str, str] = {}
    self._indices = collections.defaultdict(set)

  def add(self, split: str, index: int, name: str, reason: str) -> None:
    with self._lock:
      if name not in self.files:
        logging.warning('Skipping example %s: %s', name, reason)
      self.files[name] = reason
      self._indices[split].add(index)

  def is_bad(self, split: str, index: int) -> bool:
    return index in self._indices[split]

  @property
  def count(self) -> int:
    return len(self.files)


class _Split:
  """One split of a source, with the checks and the bad-image policy."""

  def __init__(self, source: Source, split: str, num_classes: int,
               on_bad_image: str, bad_log: BadImageLog):
    self.source = source
    self.split = split
    self.num_classes = num_classes
    self.on_bad_image = on_bad_image
    self.bad_log = bad_log

  def __len__(self):
    return len(self.source)

  def unreadable(self, index: int, error: BadImageError) -> None:
    """Applies config.on_bad_image: raises ('stop') or records ('skip')."""
    if self.on_bad_image == 'stop':
      raise BadImageError(
          f'{error}\nSet config.on_bad_image="skip" to count and skip '
          'unreadable files instead of stopping.') from error
    self.bad_log.add(self.split, index, self.source.name(index), str(error))

  def load(self, index: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The checked example, or None if it is unreadable and skipped."""
    if self.bad_log.is_bad(self.split, index):
      return None
    try:
      image, label = self.source.load(index)
    except BadImageError as e:
      self.unreadable(index, e)
      return None
    check_label(label, self.num_classes, self.source.name(index),
                image.shape[:2], self.split)
    return image, label


def scan_labels(split: _Split, *, max_files: int, seed: int, pool) -> None:
  """Checks all masks (or a fixed random sample of max_files) at start-up.

  Catches the common mistakes before the first step: out-of-range values (all
  offending files listed at once), image/mask size mismatches and 0/255 binary
  masks, which cannot be told apart from ignore borders one file at a time.
  """
  source, num_classes = split.source, split.num_classes
  n = len(source)
  if n <= max_files:
    indices = np.arange(n)
  else:
    indices = np.sort(np.random.default_rng(seed).choice(n, max_files, False))

  def scan(i):
    try:
      label = source.load_label(i)
      hw = source.image_size(i)
    except BadImageError as e:
      split.unreadable(i, e)
      return None
    if tuple(label.shape) != tuple(hw):
      check_label(label, num_classes, source.name(i), hw, split.split)
    present = np.bincount(label.reshape(-1), minlength=256) > 0
    return present

  out_of_range = {}
  any_class = False
  any_ignore = False
  scanned = 0
  for i, present in zip(indices, pool.map(scan, indices)):
    if present is None:
      continue
    scanned += 1
    values = np.flatnonzero(present)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
      out_of_range[source.name(i)] = bad.tolist()
    any_class |= bool(present[1:min(num_classes, IGNORE_LABEL)].any())
    any_ignore |= bool(present[IGNORE_LABEL])
  if out_of_range:
    raise out_of_range_error(out_of_range, num_classes, split.split)
  if scanned and any_ignore and not any_class:
    raise binary_mask_error(scanned, split.split)
  logging.info('Checked %d of %d masks of split %r.', scanned, n, split.split)


# ----------------------------------------------------------------------------
# Augmentation.
# ----------------------------------------------------------------------------


def _hw(size) -> Tuple[int, int]:
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


def _normalise_into(dst: np.ndarray, image: np.ndarray) -> None:
  np.subtract(image, _MEAN_255, out=dst, casting='unsafe')
  dst /= _STD_255


def train_transform(image: np.ndarray, label: np.ndarray,
                    rng: np.random.Generator, crop_size: Tuple[int, int],
                    scale_range: Tuple[float, float], out_image: np.ndarray,
                    out_label: np.ndarray) -> None:
  """Random scale, pad, random crop and flip, written into out_* slots.

  Equivalent to: rescale the whole image by s (image bilinear, label nearest
  at pixel centres), pad bottom/right to the crop size (image with the mean,
  label with 255), take a random crop, flip horizontally with p=0.5. Only the
  part of the rescaled image inside the crop is computed (PIL's resize box), so
  a 2x scale of a 1024x2048 image costs the crop, not 8M pixels.

  Args:
    image: uint8 [H, W, 3]; label: uint8 [H, W].
    rng: the example's generator; draws scale, y0, x0, flip in that order.
    crop_size: (ch, cw).
    scale_range: (low, high) of the uniform scale factor.
    out_image: float32 [ch, cw, 3], zero-filled; out_label: int32 [ch, cw],
      255-filled.
  """
  h, w = label.shape
  ch, cw = crop_size
  scale = rng.uniform(*scale_range)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  y0 = int(rng.integers(0, max(nh, ch) - ch + 1))
  x0 = int(rng.integers(0, max(nw, cw) - cw + 1))
  flip = bool(rng.random() < 0.5)
  # Part of the rescaled image inside the crop window; the rest is padding.
  vh, vw = min(ch, nh - y0), min(cw, nw - x0)
  sy, sx = h / nh, w / nw
  box = (x0 * sx, y0 * sy, (x0 + vw) * sx, (y0 + vh) * sy)
  img = np.asarray(Image.fromarray(image).resize((vw, vh), Image.BILINEAR,
                                                 box=box))
  # Label: nearest pixel centre, floor((i + 0.5) * h / nh), in integers so the
  # crop equals the same rows of a full resize (PIL's boxed NEAREST can break
  # ties one row differently).
  rows = (2 * np.arange(y0, y0 + vh) + 1) * h // (2 * nh)
  cols_src = (2 * np.arange(x0, x0 + vw) + 1) * w // (2 * nw)
  lab = label.take(rows, axis=0).take(cols_src, axis=1)
  if flip:  # The padding moves to the left.
    img, lab = img[:, ::-1], lab[:, ::-1]
    cols = slice(cw - vw, cw)
  else:
    cols = slice(0, vw)
  _normalise_into(out_image[:vh, cols], img)
  out_label[:vh, cols] = lab


def eval_transform(image: np.ndarray, label: np.ndarray,
                   eval_size: Optional[Tuple[int, int]], out_image: np.ndarray,
                   out_label: np.ndarray) -> None:
  """Full resolution (top-left of a padded slot) or resized to eval_size.

  The label is never resized: scoring happens at the original resolution.
  """
  h, w = label.shape
  if eval_size is None:
    _normalise_into(out_image[:h, :w], image)
  else:
    eh, ew = eval_size
    resized = np.asarray(Image.fromarray(image).resize((ew, eh),
                                                       Image.BILINEAR))
    _normalise_into(out_image, resized)
  out_label[:h, :w] = label


# ----------------------------------------------------------------------------
# Iterators.
# ----------------------------------------------------------------------------


def _batches(make_batch: Callable[[int], Tuple[dict, list]], first: int,
             end: Optional[int], prefetch: int) -> Iterator[dict]:
  """Yields make_batch(k)[0] for k = first.. (end), keeping `prefetch` ahead."""
  pending = collections.deque()
  k = first
  try:
    while True:
      while len(pending) <= prefetch and (end is None or k < end):
        pending.append(make_batch(k))
        k += 1
      if not pending:
        return
      batch, futures = pending.popleft()
      for f in futures:
        f.result()  # Re-raises a worker's exception here.
      yield batch
  finally:
    for _, futures in pending:
      for f in futures:
        f.cancel()


def _global_slice(global_batch: int, process_index: int,
                  process_count: int, what: str) -> Tuple[int, int]:
  if global_batch % process_count:
    raise LabelError(f'config.{what}={global_batch} must be divisible by the '
                     f'number of processes ({process_count}).')
  per_process = global_batch // process_count
  return process_index * per_process, per_process


def train_iterator(split: _Split, *, seed: int, start_step: int,
                   batch_size: int, crop_size: Tuple[int, int],
                   scale_range: Tuple[float, float], process_index: int,
                   process_count: int, pool, prefetch: int) -> Iterator[dict]:
  """Infinite training batches from start_step on.

  The order is that of arrays.train_iterator: step s is batch s % S of epoch
  s // S (S = steps per epoch, remainder dropped), epoch e reads
  arrays.epoch_permutation(n, seed, e); example j of the global batch at step s
  is augmented with rng (seed, 1, s, j).
  """
  n = len(split)
  offset, per_process = _global_slice(batch_size, process_index,
                                      process_count, 'batch_size')
  steps_per_epoch = arrays.steps_per_epoch(n, batch_size)
  if steps_per_epoch < 1:
    raise LabelError(
        f'The training split has {n} examples, fewer than the global batch '
        f'size {batch_size}; lower config.batch_size.')
  cache = {}

  def permutation(epoch):
    if epoch not in cache:
      cache.clear()
      cache[epoch] = arrays.epoch_permutation(n, seed, epoch)
    return cache[epoch]

  def example(step, j, perm, out_image, out_label):
    pos = (step % steps_per_epoch) * batch_size + j
    for k in range(n):  # A skipped (unreadable) file: take the next one.
      loaded = split.load(int(perm[(pos + k) % n]))
      if loaded is not None:
        break
    else:
      raise BadImageError(f'No readable example in split {split.split!r}.')
    rng = np.random.default_rng([seed, _AUGMENT_STREAM, step, j])
    train_transform(*loaded, rng, crop_size, scale_range, out_image, out_label)

  def make_batch(step):
    ch, cw = crop_size
    batch = dict(image=np.zeros((per_process, ch, cw, 3), np.float32),
                 label=np.full((per_process, ch, cw), IGNORE_LABEL, np.int32))
    perm = permutation(step // steps_per_epoch)
    futures = [
        pool.submit(example, step, offset + i, perm, batch['image'][i],
                    batch['label'][i]) for i in range(per_process)
    ]
    return batch, futures

  return _batches(make_batch, start_step, None, prefetch)


def eval_iterator(split: _Split, *, batch_size: int,
                  eval_size: Optional[Tuple[int, int]],
                  image_shape: Tuple[int, int], label_shape: Tuple[int, int],
                  process_index: int, process_count: int, pool,
                  prefetch: int) -> Iterator[dict]:
  """One pass over the split; every example is in exactly one unmasked slot.

  All processes yield the same number of batches; the last global batch is
  filled with mask=0 padding examples.
  """
  n = len(split)
  offset, per_process = _global_slice(batch_size, process_index,
                                      process_count, 'eval_batch_size')

  def example(index, i, batch):
    if index >= n:
      return
    loaded = split.load(index)
    if loaded is None:
      return
    image, label = loaded
    h, w = label.shape
    if h > label_shape[0] or w > label_shape[1]:
      raise LabelError(
          f'{split.source.name(index)}: {h}x{w} is larger than the size '
          f'{label_shape} read from the file headers at start-up.')
    eval_transform(image, label, eval_size, batch['image'][i],
                   batch['label'][i])
    batch['label_hw'][i] = (h, w)
    batch['mask'][i] = 1.0

  def make_batch(k):
    batch = dict(
        image=np.zeros((per_process, *image_shape, 3), np.float32),
        label=np.full((per_process, *label_shape), IGNORE_LABEL, np.int32),
        mask=np.zeros((per_process,), np.float32),
        label_hw=np.zeros((per_process, 2), np.int32))
    start = k * batch_size + offset
    futures = [
        pool.submit(example, start + i, i, batch) for i in range(per_process)
    ]
    return batch, futures

  num_batches = -(-n // batch_size)
  return _batches(make_batch, 0, num_batches, prefetch)


def _max_image_size(split: _Split, pool) -> Tuple[int, int]:
  def size(i):
    if split.bad_log.is_bad(split.split, i):
      return (0, 0)
    try:
      return split.source.image_size(i)
    except BadImageError as e:
      split.unreadable(i, e)
      return (0, 0)

  sizes = np.asarray(list(pool.map(size, range(len(split)))) or [(1, 1)])
  return int(sizes[:, 0].max()), int(sizes[:, 1].max())


# ----------------------------------------------------------------------------
# Sources and the entry point.
# ----------------------------------------------------------------------------


class ArraySource:
  """In-memory uint8 images [N, H, W, 3] and labels [N, H, W]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, prefix: str):
    self.images, self.labels, self.prefix = images, labels, prefix

  def __len__(self):
    return len(self.images)

  def name(self, index):
    return f'{self.prefix}[{index}]'

  def load(self, index):
    return self.images[index], self.labels[index]

  def load_label(self, index):
    return self.labels[index]

  def image_size(self, index):
    return tuple(self.images.shape[1:3])


@dataclasses.dataclass
class SegmentationData:
  """What get_segmentation_datasets returns (see the module docstring)."""
  train_iter: Iterator[dict]
  eval_iter_fn: Callable[[], Iterator[dict]]
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  class_names: Tuple[str, ...]
  eval_image_shape: Tuple[int, int]
  eval_label_shape: Tuple[int, int]
  bad_images: BadImageLog
  ignore_label: int = IGNORE_LABEL


DATASETS = ('shapes_seg', 'voc', 'cityscapes', 'oxford_iiit_pet')


def _sources(config):
  """(train, eval sources, num_classes, class_names) of config.dataset."""
  dataset = config.get('dataset')
  num_classes = config.get('num_classes')
  train_split, eval_split = config.get('train_split'), config.get('eval_split')
  if dataset == 'shapes_seg':
    from jaxres.data import shapes  # pylint: disable=g-import-not-at-top
    num_classes = num_classes or 6
    size = config.get('image_size', 64)
    make = lambda n, s: shapes.make_segmentation(n, size, s, num_classes)
    train = ArraySource(*make(config.get('shapes_train_size', 1000),
                             data_lib.SHAPES_TRAIN_SEED),
                        'shapes_seg/train')
    evals = ArraySource(*make(config.get('shapes_eval_size', 200),
                             data_lib.SHAPES_EVAL_SEED),
                        'shapes_seg/eval')
    return train, evals, num_classes, tuple(shapes.class_names(num_classes))
  if dataset == 'voc':
    from jaxres.data import voc  # pylint: disable=g-import-not-at-top
    if not num_classes:
      raise LabelError('config.num_classes must be set for dataset="voc" '
                       '(21 for PASCAL VOC: 20 classes + background).')
    kwargs = dict(
        image_dir=config.get('voc_image_dir', 'JPEGImages'),
        mask_dir=config.get('voc_mask_dir'),
        split_dir=config.get('voc_split_dir', 'ImageSets/Segmentation'),
        image_ext=config.get('voc_image_ext'),
        mask_ext=config.get('voc_mask_ext', '.png'),
        binary_mask_255_to_1=config.get('binary_mask_255_to_1', False))
    root = config.get('data_dir')
    if not root:
      raise LabelError('config.data_dir must name the VOC-style root folder '
                       '(the one holding JPEGImages/ and ImageSets/).')
    train = voc.VocFolder(root, train_split or 'train', **kwargs)
    evals = voc.VocFolder(root, eval_split or 'val', **kwargs)
    names = config.get('class_names') or voc.class_names(num_classes)
    return train, evals, num_classes, tuple(names)
  if dataset in ('cityscapes', 'oxford_iiit_pet'):
    from jaxres.data import seg_tfds  # pylint: disable=g-import-not-at-top
    if dataset == 'cityscapes':
      make = lambda split: seg_tfds.cityscapes(split, config.get('data_dir'))
      names = seg_tfds.CITYSCAPES_CLASSES
      train_split = train_split or 'train'
      eval_split = eval_split or 'validation'
    else:
      border = config.get('pets_border', 'ignore')
      make = lambda split: seg_tfds.oxford_iiit_pet(
          split, config.get('data_dir'), border=border)
      names = seg_tfds.pets_class_names(border)
      train_split = train_split or 'train'
      eval_split = eval_split or 'test'
    if num_classes and num_classes != len(names):
      raise LabelError(
          f'dataset={dataset!r} has {len(names)} classes {names}, but '
          f'config.num_classes={num_classes}. Set config.num_classes='
          f'{len(names)} (or leave it unset).')
    return make(train_split), make(eval_split), len(names), tuple(names)
  raise LabelError(f'Unknown segmentation dataset {dataset!r}. Set '
                   f'config.dataset to one of {", ".join(DATASETS)}.')


def get_segmentation_datasets(config, *, seed: int, start_step: int = 0,
                              process_index: int = 0,
                              process_count: int = 1) -> SegmentationData:
  """Builds the checked sources and this process's train/eval iterators."""
  on_bad_image = config.get('on_bad_image', 'stop')
  if on_bad_image not in ('skip', 'stop'):
    raise LabelError(f'config.on_bad_image must be "skip" or "stop", got '
                     f'{on_bad_image!r}.')
  train_source, eval_source, num_classes, class_names = _sources(config)
  if not 2 <= num_classes < IGNORE_LABEL:
    raise LabelError(f'num_classes must be in [2, {IGNORE_LABEL}), got '
                     f'{num_classes}.')
  pool = concurrent.futures.ThreadPoolExecutor(
      config.get('data_workers', 8), thread_name_prefix='seg-data')
  bad_log = BadImageLog()
  train = _Split(train_source, 'train', num_classes, on_bad_image, bad_log)
  evals = _Split(eval_source, 'eval', num_classes, on_bad_image, bad_log)
  for split in (train, evals):
    scan_labels(split, max_files=config.get('label_check_files', 300),
                seed=seed, pool=pool)

  batch_size = config.get('batch_size')
  eval_batch_size = config.get('eval_batch_size') or batch_size
  prefetch = config.get('prefetch_batches', 2)
  eval_size = config.get('eval_size')
  eval_size = None if eval_size is None else _hw(eval_size)
  label_shape = _max_image_size(evals, pool)
  if eval_size is None:
    m = config.get('eval_pad_multiple', 32)
    label_shape = tuple(-(-s // m) * m for s in label_shape)
  image_shape = label_shape if eval_size is None else eval_size

  train_iter = train_iterator(
      train, seed=seed, start_step=start_step, batch_size=batch_size,
      crop_size=_hw(config.get('crop_size', 512)),
      scale_range=tuple(config.get('scale_range', (0.5, 2.0))),
      process_index=process_index, process_count=process_count, pool=pool,
      prefetch=prefetch)

  def eval_iter_fn():
    return eval_iterator(
        evals, batch_size=eval_batch_size, eval_size=eval_size,
        image_shape=image_shape, label_shape=label_shape,
        process_index=process_index, process_count=process_count, pool=pool,
        prefetch=prefetch)

  return SegmentationData(
      train_iter=train_iter, eval_iter_fn=eval_iter_fn,
      num_train_examples=len(train), num_eval_examples=len(evals),
      num_classes=num_classes, class_names=class_names,
      eval_image_shape=tuple(image_shape), eval_label_shape=tuple(label_shape),
      bad_images=bad_log)
