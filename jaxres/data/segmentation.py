"""Semantic segmentation input pipelines: one numpy/PIL augmentation for all.

Every source (the embedded shapes, VOC-style folders, TFDS cityscapes and
oxford_iiit_pet) hands this module an RGB image (a decoded PIL image, or a
uint8 [H, W, 3] array for in-memory data) and a uint8 class-index label
[H, W] (255 = ignore). The sources and label checks live here, the
augmentation in seg_transforms.py, batching, sharding and the bad-file policy
in batching.py, so every dataset behaves the same. Each image is decoded once
(PIL, files and TFDS records alike) and becomes a numpy array once, after its
resize (in-memory arrays become a PIL image only to be resized). Work runs
on a thread pool (PIL and numpy release the GIL), so TensorFlow is never on
the hot path.

  data = get_segmentation_datasets(config, seed=0, process_index=0,
                                   process_count=1)
  batches = data.train_iter_fn(start_step)  # image [b, ch, cw, 3], label
  for batch in data.eval_iter_fn():         # + mask [b], label_hw [b, 2]
    ...

Training batches are a pure function of (seed, step), in batching.py's order:
epoch e reads a permutation drawn from (seed, e) in global batches (remainder
dropped), and the augmentation of the j-th example of the global batch at
step t draws from (seed, 1, t, j). ``train_iter_fn(k)`` yields exactly what
``train_iter_fn(0)`` yields from its k-th batch on, and the processes' rows of
a global batch concatenate to the one-process batch.

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

Config fields read (all declared in configs/segmentation_common.py):
  dataset: 'shapes_seg' | 'voc' | 'folder' | 'ade20k' | 'cityscapes' |
    'oxford_iiit_pet'.
  data_dir: the VOC-style root for 'voc', the root of the image and mask
    folders for 'folder' (seg_folder.py), ADEChallengeData2016 for 'ade20k'
    (ade20k.py); the TFDS data_dir for TFDS sources (None: the TFDS default).
  train_split, eval_split: None picks the source's usual splits (voc and
    folder train/val, ade20k training/validation, cityscapes train/validation,
    oxford_iiit_pet train/test).
  num_classes: classes including background; required for 'voc' and
    'folder', checked against the source otherwise.
  crop_size: training crop, int or (h, w).
  scale_range: random rescale factor range for training.
  eval_size: None = full resolution, else int or (h, w).
  eval_pad_multiple: full-resolution eval pads to a multiple of this.
  batch_size, eval_batch_size: GLOBAL batch sizes (eval None: batch_size).
  binary_mask_255_to_1: read 0/255 masks as 0/1 (VOC folders).
  on_bad_image: 'stop' raises on an unreadable file, 'skip' counts it and
    uses the next example of the permutation (train) or masks it (eval).
  data_workers: decoding/augmentation threads.
  prefetch_batches: batches prepared ahead of the consumer.
  label_check_files: masks scanned at start-up per split (all of them if
    there are fewer); every loaded mask is checked again on the fly.
  VOC layout: voc_image_dir, voc_mask_dir (None: SegmentationClass if it
    holds every id of the split, else SegmentationClassAug), voc_split_dir,
    voc_image_ext (None: any of .jpg .jpeg .png .bmp), voc_mask_ext,
    class_names (None: VOC names for 21 classes).
  Own folders: folder_image_dir, folder_mask_dir, folder_image_exts,
    folder_mask_exts, folder_mask_suffix, folder_split_dir, val_fraction,
    split_seed, folder_skip_unpaired (see seg_folder.py); reduce_zero_label
    (folder: False when None; ade20k: True when None).
  oxford_iiit_pet: pets_border ('ignore' | 'background' | 'pet' | 'class').
  shapes_seg: image_size, shapes_train_size, shapes_eval_size (declared in
    configs/common.py).
"""
import concurrent.futures
import dataclasses
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
from PIL import Image

from jaxres import data as data_lib
from jaxres.data import arrays
from jaxres.data import batching
from jaxres.data import IGNORE_LABEL
from jaxres.data import seg_labels
from jaxres.data import seg_transforms
# Re-exported: callers catch segmentation.LabelError and BadImageError.
from jaxres.data.errors import BadImageError
from jaxres.data.errors import LabelError
from jaxres.data.seg_labels import check_label


def _hw(size) -> Tuple[int, int]:
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


# ----------------------------------------------------------------------------
# Sources and the entry point.
# ----------------------------------------------------------------------------


def _image_hw(image: seg_transforms.ImageLike) -> Tuple[int, int]:
  if isinstance(image, Image.Image):
    return image.height, image.width
  return tuple(image.shape[:2])


class CheckedSource:
  """A source whose examples are (image, label, name), labels checked."""

  def __init__(self, source: seg_labels.LabelSource, num_classes: int,
               split: str):
    self.source, self.num_classes, self.split = source, num_classes, split

  def __len__(self):
    return len(self.source)

  def name(self, index):
    return self.source.name(index)

  def load_label(self, index):
    return self.source.load_label(index)

  def image_size(self, index):
    return self.source.image_size(index)

  def load(self, index):
    image, label = self.source.load(index)
    name = self.source.name(index)
    check_label(label, self.num_classes, name, _image_hw(image), self.split)
    return image, label, name


def _max_image_size(reader: batching.Reader, pool) -> Tuple[int, int]:
  def size(i):
    if reader.bad_images.is_bad(reader.split, i):
      return (0, 0)
    try:
      return reader.source.image_size(i)
    except BadImageError as e:
      reader.unreadable(i, e)
      return (0, 0)

  sizes = np.asarray(list(pool.map(size, range(len(reader)))) or [(1, 1)])
  return int(sizes[:, 0].max()), int(sizes[:, 1].max())


@dataclasses.dataclass
class SegmentationData:
  """What get_segmentation_datasets returns (see the module docstring).

  ``train_iter_fn(start_step)`` yields this process's rows of the global
  training batches from ``start_step`` on; ``eval_iter_fn()`` makes one
  padded pass over the eval split.
  """
  train_iter_fn: Callable[[int], Iterator[dict]]
  eval_iter_fn: Callable[[], Iterator[dict]]
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  class_names: Tuple[str, ...]
  eval_image_shape: Tuple[int, int]
  eval_label_shape: Tuple[int, int]
  bad_images: batching.BadImageLog
  ignore_label: int = IGNORE_LABEL
  # Pixel counts of the scanned training masks (config.label_check_files).
  train_label_stats: Optional[seg_labels.LabelStats] = None


DATASETS = ('shapes_seg', 'voc', 'folder', 'ade20k', 'cityscapes',
            'oxford_iiit_pet')


def _sources(config):
  """(train, eval sources, num_classes, class_names) of config.dataset."""
  dataset = config.dataset
  num_classes = config.num_classes
  train_split, eval_split = config.train_split, config.eval_split
  if dataset == 'shapes_seg':
    from jaxres.data import shapes  # pylint: disable=g-import-not-at-top
    num_classes = num_classes or 6
    size = config.image_size
    make = lambda n, s: shapes.make_segmentation(n, size, s, num_classes)
    train = arrays.ArraySource(
        *make(config.shapes_train_size, data_lib.SHAPES_TRAIN_SEED),
        'shapes_seg/train')
    evals = arrays.ArraySource(
        *make(config.shapes_eval_size, data_lib.SHAPES_EVAL_SEED),
        'shapes_seg/eval')
    return train, evals, num_classes, tuple(shapes.class_names(num_classes))
  if dataset == 'voc':
    from jaxres.data import voc  # pylint: disable=g-import-not-at-top
    if not num_classes:
      raise LabelError('config.num_classes must be set for dataset="voc" '
                       '(21 for PASCAL VOC: 20 classes + background).')
    kwargs = dict(
        image_dir=config.voc_image_dir,
        mask_dir=config.voc_mask_dir,
        split_dir=config.voc_split_dir,
        image_ext=config.voc_image_ext,
        mask_ext=config.voc_mask_ext,
        binary_mask_255_to_1=config.binary_mask_255_to_1)
    root = config.data_dir
    if not root:
      raise LabelError('config.data_dir must name the VOC-style root folder '
                       '(the one holding JPEGImages/ and ImageSets/).')
    train = voc.VocFolder(root, train_split or 'train', **kwargs)
    evals = voc.VocFolder(root, eval_split or 'val', **kwargs)
    names = config.class_names or voc.class_names(num_classes)
    return train, evals, num_classes, tuple(names)
  if dataset == 'folder':
    from jaxres.data import seg_folder  # pylint: disable=g-import-not-at-top
    if not num_classes:
      raise LabelError(
          'config.num_classes must be set for dataset="folder": the classes '
          'in the masks including background (2 for foreground/background).')
    train, evals = seg_folder.folder_sources(
        config, train_split, eval_split,
        reduce_zero_label=bool(config.reduce_zero_label))
    names = config.class_names or seg_folder.class_names(num_classes)
    return train, evals, num_classes, tuple(names)
  if dataset == 'ade20k':
    from jaxres.data import ade20k  # pylint: disable=g-import-not-at-top
    reduce = config.reduce_zero_label in (None, True)
    if num_classes and num_classes != ade20k.NUM_CLASSES and reduce:
      raise LabelError(
          f'ADE20K has {ade20k.NUM_CLASSES} classes, but config.num_classes='
          f'{num_classes}. Set config.num_classes={ade20k.NUM_CLASSES} (or '
          'leave it unset).')
    if not reduce and num_classes != ade20k.NUM_CLASSES + 1:
      raise LabelError(
          'config.reduce_zero_label=False keeps "other" as class 0: set '
          f'config.num_classes={ade20k.NUM_CLASSES + 1}.')
    train, evals = ade20k.sources(config, train_split, eval_split, reduce)
    names = ade20k.CLASSES if reduce else ('other',) + ade20k.CLASSES
    return train, evals, len(names), tuple(config.class_names or names)
  if dataset in ('cityscapes', 'oxford_iiit_pet'):
    from jaxres.data import seg_tfds  # pylint: disable=g-import-not-at-top
    if dataset == 'cityscapes':
      make = lambda split: seg_tfds.cityscapes(split, config.data_dir)
      names = seg_tfds.CITYSCAPES_CLASSES
      train_split = train_split or 'train'
      eval_split = eval_split or 'validation'
    else:
      border = config.pets_border
      make = lambda split: seg_tfds.oxford_iiit_pet(
          split, config.data_dir, border=border)
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


def _train_fn(crop_size, scale_range):
  def transform(example, rng, slot):
    image, label, _ = example
    seg_transforms.train_transform(image, label, rng, crop_size, scale_range,
                                   slot['image'], slot['label'])
  return transform


def _eval_fn(eval_size, label_shape):
  def transform(example, slot):
    image, label, name = example
    h, w = label.shape
    if h > label_shape[0] or w > label_shape[1]:
      raise LabelError(
          f'{name}: {h}x{w} is larger than the size {label_shape} read from '
          'the file headers at start-up.')
    seg_transforms.eval_transform(image, label, eval_size, slot['image'],
                                  slot['label'])
    slot['label_hw'] = (h, w)
  return transform


def get_segmentation_datasets(config, *, seed: int, process_index: int = 0,
                              process_count: int = 1) -> SegmentationData:
  """Builds the checked sources and this process's train/eval iterators."""
  on_bad_image = batching.check_on_bad_image(config.on_bad_image)
  train_source, eval_source, num_classes, class_names = _sources(config)
  if not 2 <= num_classes < IGNORE_LABEL:
    raise LabelError(f'num_classes must be in [2, {IGNORE_LABEL}), got '
                     f'{num_classes}.')
  batch_size = config.batch_size
  eval_batch_size = config.eval_batch_size or batch_size
  batching.per_process(batch_size, process_count, 'batch_size')
  batching.per_process(eval_batch_size, process_count, 'eval_batch_size')
  pool = concurrent.futures.ThreadPoolExecutor(
      config.data_workers, thread_name_prefix='seg-data')
  bad_images = batching.BadImageLog()
  train, evals = (
      batching.Reader(CheckedSource(source, num_classes, split), split,
                      on_bad_image, bad_images)
      for source, split in ((train_source, 'train'), (eval_source, 'eval')))
  train_label_stats, _ = (
      seg_labels.scan_labels(reader, num_classes,
                             max_files=config.label_check_files, seed=seed,
                             pool=pool)
      for reader in (train, evals))  # In this order: train first.

  eval_size = None if config.eval_size is None else _hw(config.eval_size)
  label_shape = _max_image_size(evals, pool)
  if eval_size is None:
    m = config.eval_pad_multiple
    label_shape = tuple(-(-s // m) * m for s in label_shape)
  image_shape = label_shape if eval_size is None else eval_size
  crop_size = _hw(config.crop_size)
  common = dict(process_index=process_index, process_count=process_count,
                pool=pool, prefetch=config.prefetch_batches)
  train_iter_fn = batching.TrainBatches(
      train, _train_fn(crop_size, tuple(config.scale_range)),
      dict(image=((*crop_size, 3), np.float32, 0),
           label=(crop_size, np.int32, IGNORE_LABEL)),
      batch_size=batch_size, seed=seed, **common)
  eval_iter_fn = batching.EvalBatches(
      evals, _eval_fn(eval_size, label_shape),
      dict(image=((*image_shape, 3), np.float32, 0),
           label=(tuple(label_shape), np.int32, IGNORE_LABEL),
           label_hw=((2,), np.int32, 0)),
      batch_size=eval_batch_size, **common)
  return SegmentationData(
      train_iter_fn=train_iter_fn, eval_iter_fn=eval_iter_fn,
      num_train_examples=len(train), num_eval_examples=len(evals),
      num_classes=num_classes, class_names=class_names,
      eval_image_shape=tuple(image_shape), eval_label_shape=tuple(label_shape),
      bad_images=bad_images, train_label_stats=train_label_stats)
