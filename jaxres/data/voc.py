"""VOC-style segmentation folders (PASCAL VOC, SBD "aug", users' own data).

  root/JPEGImages/<id>.jpg
  root/SegmentationClass/<id>.png      (or SegmentationClassAug/<id>.png)
  root/ImageSets/Segmentation/<split>.txt   one id per line

Masks hold class indices: a palette ('P') PNG is read as its indices, never
converted to RGB colours; 255 is ignore. Folder names and extensions are
arguments, so any dataset laid out this way works (config fields voc_*).
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from jaxres.data import seg_labels
from jaxres.data.errors import BadImageError
from jaxres.data.errors import LabelError

VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus',
    'car', 'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
    'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')
MASK_DIRS = ('SegmentationClass', 'SegmentationClassAug')
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def class_names(num_classes: int) -> Sequence[str]:
  if num_classes == len(VOC_CLASSES):
    return VOC_CLASSES
  return ('background',) + tuple(f'class_{i}' for i in range(1, num_classes))


def read_split(root: str, split_dir: str, split: str,
               split_dir_field: str = 'voc_split_dir') -> List[str]:
  """Ids listed in root/split_dir/split.txt (first token of each line)."""
  folder = os.path.join(root, split_dir)
  path = os.path.join(folder, f'{split}.txt')
  if not os.path.isfile(path):
    if os.path.isdir(folder):
      found = sorted(f[:-4] for f in os.listdir(folder) if f.endswith('.txt'))
      where = f'Split files in {folder}: {found or "none"}.'
    else:
      where = f'The folder {folder} does not exist.'
    raise LabelError(
        f'Split file {path} not found. {where} Set config.train_split / '
        'config.eval_split to one of them (without .txt), or write a split '
        'file with one image id (file name without extension) per line; '
        f'config.{split_dir_field} changes the folder.')
  with open(path) as f:
    ids = [line.split()[0] for line in f if line.strip()]
  if not ids:
    raise LabelError(f'Split file {path} lists no ids.')
  return ids


def _index(folder: str, exts: Sequence[str]) -> Dict[str, str]:
  """{id: file name} for the files in folder with one of the extensions."""
  index = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in exts:
      index.setdefault(stem, name)
  return index


def _missing_error(kind: str, missing: Sequence[str], num_ids: int,
                   split: str, folder: str, num_files: int,
                   hint: str) -> LabelError:
  return LabelError(
      f'{len(missing)} of the {num_ids} ids of split {split!r} have no {kind} '
      f'in {folder} ({num_files} {kind} files there); first missing: '
      f'{list(missing[:5])}. {hint}')


def read_image(path: str) -> Image.Image:
  """The decoded RGB image (PIL; the transforms resize it before numpy)."""
  try:
    with Image.open(path) as im:
      im.load()  # Decoded now; the file closes on leaving the block.
      # convert('RGB') of an RGB image would only copy it (0.5-1 ms here).
      return im if im.mode == 'RGB' else im.convert('RGB')
  except _READ_ERRORS as e:
    raise BadImageError(f'Cannot read image {path}: {e}') from e


def read_mask(path: str) -> np.ndarray:
  """uint8 [H, W] class indices; raises for colour masks."""
  try:
    with Image.open(path) as im:
      mode = im.mode
      if mode == 'LA':
        im = im.getchannel('L')
      mask = np.asarray(im)
  except _READ_ERRORS as e:
    raise BadImageError(f'Cannot read mask {path}: {e}') from e
  if mode in ('RGB', 'RGBA'):
    rgb = mask[..., :3]
    if (rgb == rgb[..., :1]).all():  # Gray saved as RGB.
      return np.ascontiguousarray(rgb[..., 0])
    raise LabelError(
        f'{path} is a colour ({mode}) mask. Masks must hold one class index '
        'per pixel: a palette (P) or grayscale (L) PNG. Convert colours to '
        'indices first (for the VOC colour map: index = position of the '
        'colour in the palette).')
  if mask.dtype != np.uint8:
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
      raise LabelError(
          f'{path} holds values outside 0..255 (mode {mode}); class indices '
          'must fit in 8 bits with 255 as the ignore label.')
    mask = mask.astype(np.uint8)
  return mask


def image_size(path: str):
  """(height, width) from the header only."""
  try:
    with Image.open(path) as im:
      return im.size[1], im.size[0]
  except _READ_ERRORS as e:
    raise BadImageError(f'Cannot read image {path}: {e}') from e


class VocFolder:
  """One split of a VOC-style folder, as a seg_labels.LabelSource."""

  def __init__(self, root: str, split: str, *,
               image_dir: str = 'JPEGImages', mask_dir: Optional[str] = None,
               split_dir: str = 'ImageSets/Segmentation',
               image_ext: Optional[str] = None, mask_ext: str = '.png',
               binary_mask_255_to_1: bool = False):
    self.root, self.split = root, split
    self.binary_mask_255_to_1 = binary_mask_255_to_1
    if not os.path.isdir(root):
      raise LabelError(f'config.data_dir={root!r} is not a folder.')
    self.ids = read_split(root, split_dir, split)

    image_folder = os.path.join(root, image_dir)
    if not os.path.isdir(image_folder):
      raise LabelError(
          f'Image folder {image_folder} not found; set config.voc_image_dir.')
    exts = (image_ext.lower(),) if image_ext else IMAGE_EXTS
    images = _index(image_folder, exts)
    missing = [i for i in self.ids if i not in images]
    if missing:
      raise _missing_error(
          'image', missing, len(self.ids), split, image_folder, len(images),
          f'Looked for extensions {exts}; set config.voc_image_ext.')
    self.image_paths = [os.path.join(image_folder, images[i]) for i in self.ids]

    self.mask_paths = self._find_masks(mask_dir, mask_ext.lower())

  def _find_masks(self, mask_dir, mask_ext):
    """Mask paths from the first candidate folder holding every id.

    SegmentationClass comes first: for VOC val it holds the original masks
    (with ignore borders), while SegmentationClassAug is needed for train_aug.
    """
    candidates = [mask_dir] if mask_dir else list(MASK_DIRS)
    folders = [os.path.join(self.root, d) for d in candidates]
    folders = [f for f in folders if os.path.isdir(f)]
    if not folders:
      raise LabelError(
          f'No mask folder: looked for {candidates} under {self.root}. Set '
          'config.voc_mask_dir to the folder holding the mask PNGs.')
    best = None
    for folder in folders:
      masks = _index(folder, (mask_ext,))
      missing = [i for i in self.ids if i not in masks]
      if not missing:
        return [os.path.join(folder, masks[i]) for i in self.ids]
      if best is None or len(missing) < len(best[1]):
        best = (folder, missing, len(masks))
    folder, missing, count = best
    raise _missing_error(
        'mask', missing, len(self.ids), self.split, folder, count,
        f'Masks are <id>{mask_ext}; searched {folders}. Set '
        'config.voc_mask_dir / config.voc_mask_ext, or fix the split file.')

  def __len__(self):
    return len(self.ids)

  def name(self, index):
    return self.mask_paths[index]

  def load_label(self, index):
    mask = read_mask(self.mask_paths[index])
    if self.binary_mask_255_to_1:
      mask = seg_labels.binary_255_to_1(mask, self.mask_paths[index])
    return mask

  def load(self, index):
    return read_image(self.image_paths[index]), self.load_label(index)

  def image_size(self, index):
    return image_size(self.image_paths[index])
