"""TFDS segmentation sources: cityscapes/semantic_segmentation, oxford_iiit_pet.

Both are read from a prepared TFDS data_dir and never downloaded. A split's
encoded examples (the JPEG/PNG bytes, not pixels) are read once into memory;
the shared pipeline in segmentation.py then decodes them with PIL on its
threads (each image once, resized as a PIL image). Random access is what
keeps the training order a function of (seed, step). Memory per process:
cityscapes train is about 6.6 GB of PNG bytes, oxford_iiit_pet train about
0.4 GB. TensorFlow is imported only here, only when one of these datasets is
asked for, and kept off the GPUs.
"""
import io
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image

from jaxres.data.errors import BadImageError
from jaxres.data.errors import DatasetNotFoundError
from jaxres.data.errors import LabelError

CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
    'truck', 'bus', 'train', 'motorcycle', 'bicycle')

# labelId -> trainId, from cityscapesScripts helpers/labels.py; every other
# labelId (unlabeled, ego vehicle, parking, rail track, guard rail, bridge,
# tunnel, polegroup, caravan, trailer, ...) is ignored.
_CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LUT = np.full(256, 255, np.uint8)
for _label_id, _train_id in _CITYSCAPES_TRAIN_IDS.items():
  CITYSCAPES_LUT[_label_id] = _train_id

# Trimap: 1 = pet, 2 = background, 3 = border (the uncertain outline).
PETS_BORDER = {'ignore': 255, 'background': 0, 'pet': 1, 'class': 2}


def pets_class_names(border: str = 'ignore') -> Tuple[str, ...]:
  _check_border(border)
  return ('background', 'pet', 'border') if border == 'class' else (
      'background', 'pet')


def _check_border(border):
  if border not in PETS_BORDER:
    raise LabelError(f'config.pets_border must be one of {list(PETS_BORDER)}, '
                     f'got {border!r}.')


def pets_lut(border: str = 'ignore') -> np.ndarray:
  """uint8 [256] trimap value -> class (pet 1, background 0, border per arg)."""
  _check_border(border)
  lut = np.full(256, 255, np.uint8)
  lut[1], lut[2], lut[3] = 1, 0, PETS_BORDER[border]
  return lut


def map_cityscapes(label_ids: np.ndarray, name: str) -> np.ndarray:
  del name
  return CITYSCAPES_LUT[label_ids]


def make_pets_mapper(border: str) -> Callable[[np.ndarray, str], np.ndarray]:
  lut = pets_lut(border)

  def map_pets(trimap, name):
    if trimap.min(initial=1) < 1 or trimap.max(initial=1) > 3:
      raise LabelError(
          f'{name}: trimap values {np.unique(trimap).tolist()}, expected only '
          '1 (pet), 2 (background), 3 (border).')
    return lut[trimap]

  return map_pets


def _import_tfds():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:  # TF must not take GPU memory that JAX needs.
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # Already initialised by someone else.
    pass
  return tfds


def _not_prepared_error(name, builder, how) -> DatasetNotFoundError:
  root = str(getattr(builder, 'data_dir_root', builder.data_dir))
  manual = f'{root}/downloads/manual'
  return DatasetNotFoundError(
      f'TFDS dataset {name!r} is not prepared under {root} (config.data_dir; '
      f'unset means the TFDS default). jaxres reads TFDS with download=False. '
      f'{how.format(root=root, manual=manual)}')


_CITYSCAPES_HOW = (
    'Cityscapes needs a manual download: after registering at '
    'https://www.cityscapes-dataset.com, put leftImg8bit_trainvaltest.zip and '
    'gtFine_trainvaltest.zip in the TFDS manual dir {manual}, then run '
    '`tfds build cityscapes/semantic_segmentation --data_dir={root} '
    '--manual_dir={manual}`.')
_PETS_HOW = (
    'Prepare it once with network access: `tfds build oxford_iiit_pet '
    '--data_dir={root}` (or copy a prepared data_dir here).')


def read_encoded(name: str, split: str, data_dir, keys: Sequence[str],
                 how: str) -> List[Tuple[bytes, ...]]:
  """The split's examples as tuples of encoded feature bytes, in file order."""
  tfds = _import_tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  decoders = tfds.decode.PartialDecoding(
      {k: True for k in keys},
      decoders={k: tfds.decode.SkipDecoding() for k in keys})
  try:
    ds = builder.as_dataset(split=split, decoders=decoders,
                            shuffle_files=False)
  except (AssertionError, tfds.core.DatasetNotFoundError) as e:
    raise _not_prepared_error(name, builder, how) from e
  except ValueError as e:
    if 'split' not in str(e).lower():
      raise
    raise LabelError(
        f'{name} has no split {split!r} (splits: '
        f'{sorted(builder.info.splits)}); set config.train_split / '
        'config.eval_split.') from e
  return [tuple(ex[k] for k in keys) for ex in tfds.as_numpy(ds)]


def _decode(data: bytes, what: str) -> Image.Image:
  try:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im
  except (OSError, SyntaxError, ValueError) as e:
    raise BadImageError(f'Cannot decode {what}: {e}') from e


class TfdsSource:
  """Encoded (image, label) pairs of a TFDS split (a seg_labels.LabelSource)."""

  def __init__(self, name: str, split: str, records: List[Tuple[bytes, bytes]],
               map_label: Callable[[np.ndarray, str], np.ndarray]):
    self.dataset, self.split = name, split
    self.records = records
    self.map_label = map_label

  def __len__(self):
    return len(self.records)

  def name(self, index):
    return f'{self.dataset}/{self.split}[{index}]'

  def load_label(self, index):
    label = np.asarray(_decode(self.records[index][1], self.name(index)))
    if label.ndim == 3:
      label = label[..., 0]
    return self.map_label(label, self.name(index))

  def load(self, index):
    image = _decode(self.records[index][0], self.name(index)).convert('RGB')
    return image, self.load_label(index)

  def image_size(self, index):
    try:
      with Image.open(io.BytesIO(self.records[index][0])) as im:
        return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError) as e:
      raise BadImageError(f'Cannot decode {self.name(index)}: {e}') from e


def cityscapes(split: str, data_dir=None) -> TfdsSource:
  name = 'cityscapes/semantic_segmentation'
  records = read_encoded(name, split, data_dir,
                         ('image_left', 'segmentation_label'), _CITYSCAPES_HOW)
  return TfdsSource(name, split, records, map_cityscapes)


def oxford_iiit_pet(split: str, data_dir=None,
                    border: str = 'ignore') -> TfdsSource:
  name = 'oxford_iiit_pet'
  map_label = make_pets_mapper(border)
  records = read_encoded(name, split, data_dir, ('image', 'segmentation_mask'),
                         _PETS_HOW)
  return TfdsSource(name, split, records, map_label)
