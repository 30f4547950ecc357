"""Segmentation from users' own folders: images and masks paired by file stem.

  <data_dir>/<folder_image_dir>/<stem>.<ext>            Images/cat_01.jpg
  <data_dir>/<folder_mask_dir>/<stem><suffix>.<ext>     Labels/cat_01.png
                                                        (masks/cat_01_mask.png)

An image and a mask pair when their stems match once config.folder_mask_suffix
('' or e.g. '_mask') is taken off the mask's stem, so no renaming is needed.
Folder names: config.folder_image_dir / folder_mask_dir, relative to data_dir;
None picks the first of IMAGE_DIRS / MASK_DIRS that exists. A '{split}' in a
folder name means one folder per split (images/{split} -> images/train and
images/val, the mmseg img_dir/ann_dir layout; ADE20K's images/training).
Extensions (config.folder_image_exts / folder_mask_exts): comma-separated,
case-insensitive; None: IMAGE_EXTS / MASK_EXTS.

The split, unless the folders are per split:
  folder_split_dir set: <data_dir>/<folder_split_dir>/<split>.txt list the
    stems of each split, one per line (train_split / eval_split name the files;
    default train / val).
  otherwise: a pair goes to eval when a hash of (split_seed, its stem) falls
    below val_fraction (at least one pair each way). A stem's split depends on
    nothing else, so it never changes when files are added or the run moves
    to other machines; the eval share is about val_fraction.
Either way the pairs of a split are in sorted stem order, and batching.py
turns them into batches: the training order is a function of (seed, step,
position in the global batch) only, whatever the process count.

Unpaired files stop the run with a list of them and the option to set
(folder_mask_suffix when the masks' names say which one), or, with
config.folder_skip_unpaired=True, are left out with a warning and a count.
Masks hold class indices with 255 = ignore (read as voc.read_mask reads them);
config.binary_mask_255_to_1 reads 0/255 masks as 0/1 and
config.reduce_zero_label maps 0 -> 255, k -> k - 1.
"""
import collections
import hashlib
import os
from typing import List, Optional, Sequence, Tuple

from absl import logging

from jaxres.data import seg_labels
from jaxres.data import voc
from jaxres.data.errors import FolderLayoutError
from jaxres.data.errors import list_names

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
MASK_EXTS = ('.png', '.bmp', '.tif', '.tiff')
IMAGE_DIRS = ('images', 'Images', 'imgs', 'img', 'img_dir', 'JPEGImages',
              'image')
MASK_DIRS = ('masks', 'Masks', 'labels', 'Labels', 'annotations',
             'Annotations', 'ann_dir', 'SegmentationClass', 'mask', 'label',
             'gt')
SPLIT = '{split}'
_SEPARATORS = '_-.'


class PairedFiles:
  """Image/mask file pairs as a seg_labels.LabelSource."""

  def __init__(self, image_paths: Sequence[str], mask_paths: Sequence[str], *,
               reduce_zero_label: bool = False,
               binary_mask_255_to_1: bool = False):
    self.image_paths, self.mask_paths = list(image_paths), list(mask_paths)
    self.reduce_zero_label = reduce_zero_label
    self.binary_mask_255_to_1 = binary_mask_255_to_1

  def __len__(self):
    return len(self.image_paths)

  def name(self, index):
    return self.mask_paths[index]

  def load_label(self, index):
    mask = voc.read_mask(self.mask_paths[index])
    if self.binary_mask_255_to_1:
      mask = seg_labels.binary_255_to_1(mask, self.mask_paths[index])
    if self.reduce_zero_label:
      mask = seg_labels.reduce_zero_label(mask)
    return mask

  def load(self, index):
    return voc.read_image(self.image_paths[index]), self.load_label(index)

  def image_size(self, index):
    return voc.image_size(self.image_paths[index])


# ----------------------------------------------------------------------------
# Pairing by stem.
# ----------------------------------------------------------------------------


def parse_exts(value, default: Sequence[str]) -> Tuple[str, ...]:
  """'.png,bmp' (or a sequence) -> ('.png', '.bmp'); None -> default."""
  if value is None:
    return tuple(default)
  items = value.split(',') if isinstance(value, str) else value
  exts = tuple('.' + e.strip().lstrip('.').lower() for e in items if e.strip())
  if not exts:
    raise FolderLayoutError(f'No file extension in {value!r}.')
  return exts


def _files(folder: str) -> List[str]:
  """Sorted names of the files in folder (hidden files left out)."""
  with os.scandir(folder) as entries:
    return sorted(e.name for e in entries
                  if not e.name.startswith('.') and e.is_file())


def _index(folder: str, exts: Sequence[str], kind: str, field: str, *,
           strip_suffix: str = '', skip_suffix: str = ''):
  """({stem: file name}, files whose name does not fit) for one folder."""
  index, rest, duplicates = {}, [], collections.defaultdict(list)
  for name in _files(folder):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in exts:
      rest.append(name)
      continue
    if skip_suffix and stem.endswith(skip_suffix):
      continue  # A mask in the image folder.
    if strip_suffix:
      if not stem.endswith(strip_suffix):
        rest.append(name)
        continue
      stem = stem[:-len(strip_suffix)]
    if stem in index:
      duplicates[stem].append(name)
    else:
      index[stem] = name
  if duplicates:
    shown = [f'{index[s]} / {" / ".join(d)}' for s, d in duplicates.items()]
    raise FolderLayoutError(
        f'{len(duplicates)} {kind} stems in {folder} have several files: '
        f'{list_names(shown, 5)}. Keep one file per stem, or limit '
        f'config.{field} to one of the extensions.')
  return index, rest


def _suggest_suffix(unpaired_masks: Sequence[str], image_stems) -> str:
  """The suffix most unpaired mask stems have over an image stem ('' none)."""
  counts = collections.Counter()
  for stem in unpaired_masks:
    for i, ch in enumerate(stem):
      if ch in _SEPARATORS and stem[:i] in image_stems:
        counts[stem[i:]] += 1
        break
  if not counts:
    return ''
  suffix, count = counts.most_common(1)[0]
  return suffix if count * 2 >= len(unpaired_masks) else ''


def _unpaired_error(image_folder, mask_folder, lonely_images, lonely_masks,
                    other_masks, image_stems, mask_exts) -> FolderLayoutError:
  lines = []
  if lonely_images:
    lines.append(f'  {len(lonely_images)} images in {image_folder} have no '
                 f'mask: {list_names(lonely_images)}')
  if lonely_masks:
    lines.append(f'  {len(lonely_masks)} masks in {mask_folder} have no '
                 f'image: {list_names(lonely_masks)}')
  stems = [os.path.splitext(m)[0] for m in lonely_masks]
  suffix = _suggest_suffix(stems, image_stems)
  fixes = []
  if suffix:
    fixes.append(f'the mask names end in {suffix!r}: set '
                 f'--config.folder_mask_suffix={suffix}')
  if other_masks:
    exts = sorted({os.path.splitext(m)[1].lower() for m in other_masks})
    fixes.append(f'{len(other_masks)} files in {mask_folder} were not read '
                 f'as masks (extensions {exts}; read: {list(mask_exts)}, or '
                 'a missing folder_mask_suffix): set config.folder_mask_exts '
                 'or config.folder_mask_suffix if they are masks')
  fixes.append('set --config.folder_skip_unpaired=True to train on the '
               'pairs only')
  return FolderLayoutError(
      'Images and masks do not pair up (an image <stem>.<ext> pairs with the '
      'mask <stem><folder_mask_suffix>.<ext>):\n' + '\n'.join(lines) +
      '\nFixes: ' + '; '.join(fixes) + '.')


def pair_folders(image_folder: str, mask_folder: str, *,
                 image_exts: Sequence[str], mask_exts: Sequence[str],
                 mask_suffix: str = '', skip_unpaired: bool = False,
                 stems: Optional[Sequence[str]] = None,
                 where: str = '') -> Tuple[List[str], List[str], List[str]]:
  """(stems, image paths, mask paths) of the pairs, in sorted stem order.

  With ``stems`` (a split file), exactly those stems are wanted, in that
  order; files not listed are not used.
  """
  same = os.path.realpath(image_folder) == os.path.realpath(mask_folder)
  if same and not mask_suffix:
    raise FolderLayoutError(
        f'Images and masks are both read from {image_folder}: set '
        'config.folder_mask_suffix (e.g. _mask) to tell the masks apart, or '
        'config.folder_image_dir / config.folder_mask_dir.')
  images, _ = _index(image_folder, image_exts, 'image', 'folder_image_exts',
                     skip_suffix=mask_suffix if same else '')
  masks, other_masks = _index(mask_folder, mask_exts, 'mask',
                              'folder_mask_exts', strip_suffix=mask_suffix)
  if same:  # The images were counted as unreadable masks there.
    other_masks = [m for m in other_masks
                   if os.path.splitext(m)[0] not in images]
  if stems is not None:
    missing = [s for s in stems if s not in images or s not in masks]
    if missing:
      detail = [f'{s} ({"no image" if s not in images else "no mask"})'
                for s in missing]
      message = (f'{len(missing)} of the {len(stems)} stems listed for '
                 f'{where} have no image in {image_folder} or no mask in '
                 f'{mask_folder}: {list_names(detail)}.')
      if not skip_unpaired:
        raise FolderLayoutError(
            message + ' Fix the split file or the folder names, extensions '
            '(config.folder_image_exts / folder_mask_exts) or '
            'config.folder_mask_suffix; or set '
            '--config.folder_skip_unpaired=True to leave them out.')
      logging.warning('%s Left out (folder_skip_unpaired=True).', message)
      stems = [s for s in stems if s not in missing]
  else:
    lonely_images = [images[s] for s in images if s not in masks]
    lonely_masks = [masks[s] for s in masks if s not in images]
    if lonely_images or lonely_masks:
      if not skip_unpaired:
        raise _unpaired_error(image_folder, mask_folder, lonely_images,
                              lonely_masks, other_masks, images, mask_exts)
      logging.warning(
          'Left out %d images without a mask and %d masks without an image '
          'in %s (folder_skip_unpaired=True): %s', len(lonely_images),
          len(lonely_masks), where or image_folder,
          list_names(lonely_images + lonely_masks, 5))
    stems = sorted(s for s in images if s in masks)
  if not stems:
    raise FolderLayoutError(
        f'No image/mask pairs for {where or "the data"}: {len(images)} images '
        f'({list(image_exts)}) in {image_folder}, {len(masks)} masks '
        f'({list(mask_exts)}, suffix {mask_suffix!r}) in {mask_folder}.')
  return (list(stems), [os.path.join(image_folder, images[s]) for s in stems],
          [os.path.join(mask_folder, masks[s]) for s in stems])


# ----------------------------------------------------------------------------
# Splits.
# ----------------------------------------------------------------------------


def _hash_unit(seed: int, stem: str) -> float:
  digest = hashlib.sha256(f'{seed}/{stem}'.encode()).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def fraction_split(stems: Sequence[str], val_fraction: float,
                   seed: int) -> Tuple[List[int], List[int]]:
  """(train indices, eval indices) of stems; see the module docstring."""
  if not 0 < val_fraction < 1:
    raise FolderLayoutError(
        f'config.val_fraction={val_fraction} must be in (0, 1), or set '
        'config.folder_split_dir to a folder with train.txt / val.txt.')
  if len(stems) < 2:
    raise FolderLayoutError(
        f'{len(stems)} image/mask pair: a train and an eval split need at '
        'least 2.')
  keys = [_hash_unit(seed, s) for s in stems]
  evals = [i for i, k in enumerate(keys) if k < val_fraction]
  if not evals:
    evals = [min(range(len(keys)), key=keys.__getitem__)]
  if len(evals) == len(stems):
    evals.remove(max(evals, key=keys.__getitem__))
  chosen = set(evals)
  return [i for i in range(len(stems)) if i not in chosen], evals


def _strip_ext(stem: str, exts: Sequence[str]) -> str:
  base, ext = os.path.splitext(stem)
  return base if ext.lower() in exts else stem


def _folder(root: str, name: str, field: str) -> str:
  path = os.path.join(root, name)
  if not os.path.isdir(path):
    raise FolderLayoutError(
        f'{path} is not a folder. Set config.{field} to the folder, relative '
        f'to config.data_dir={root!r}; folders there: '
        f'{list_names(_subfolders(root))}.')
  return path


def _subfolders(root: str) -> List[str]:
  with os.scandir(root) as entries:
    return sorted(e.name for e in entries if e.is_dir()) or ['none']


def _detect(root: str, value: Optional[str], candidates: Sequence[str],
            field: str) -> str:
  if value:
    return value
  for name in candidates:
    if os.path.isdir(os.path.join(root, name)):
      return name
  raise FolderLayoutError(
      f'No {field.split("_")[1]} folder found under {root} (looked for '
      f'{", ".join(candidates)}); folders there: '
      f'{list_names(_subfolders(root))}. Set config.{field}.')


def folder_sources(config, train_split: Optional[str],
                   eval_split: Optional[str], *,
                   reduce_zero_label: bool = False, root=None,
                   image_dir=None, mask_dir=None, image_exts=None,
                   mask_exts=None):
  """(train, eval) PairedFiles of an own folder (dataset='folder', 'ade20k').

  Keyword arguments override config.data_dir and the config's folder_*
  fields (ADE20K's layout).
  """
  root = root or config.data_dir
  if not root or not os.path.isdir(root):
    raise FolderLayoutError(
        f'config.data_dir={root!r} is not a folder: set it to the folder '
        'holding the image and mask folders.')
  image_dir = _detect(root, image_dir or config.folder_image_dir, IMAGE_DIRS,
                      'folder_image_dir')
  mask_dir = _detect(root, mask_dir or config.folder_mask_dir, MASK_DIRS,
                     'folder_mask_dir')
  train_split, eval_split = train_split or 'train', eval_split or 'val'
  # Image and mask folders that both hold a train_split sub-folder (images/
  # train, masks/train, ...) are per split.
  if SPLIT not in image_dir + mask_dir and all(
      os.path.isdir(os.path.join(root, d, train_split))
      for d in (image_dir, mask_dir)):
    image_dir, mask_dir = (f'{image_dir}/{SPLIT}', f'{mask_dir}/{SPLIT}')
  image_exts = parse_exts(image_exts or config.folder_image_exts, IMAGE_EXTS)
  mask_exts = parse_exts(mask_exts or config.folder_mask_exts, MASK_EXTS)
  common = dict(image_exts=image_exts, mask_exts=mask_exts,
                mask_suffix=config.folder_mask_suffix or '',
                skip_unpaired=config.folder_skip_unpaired)
  labels = dict(reduce_zero_label=reduce_zero_label,
                binary_mask_255_to_1=config.binary_mask_255_to_1)

  if (SPLIT in image_dir) != (SPLIT in mask_dir):
    raise FolderLayoutError(
        f'config.folder_image_dir={image_dir!r} and config.folder_mask_dir='
        f'{mask_dir!r}: put {SPLIT} in both (one folder per split) or in '
        'neither.')
  if SPLIT in image_dir:
    sources = []
    for split in (train_split, eval_split):
      folders = [_folder(root, d.replace(SPLIT, split), field) for d, field in
                 ((image_dir, 'folder_image_dir'),
                  (mask_dir, 'folder_mask_dir'))]
      _, images, masks = pair_folders(*folders, where=f'split {split!r}',
                                      **common)
      sources.append(PairedFiles(images, masks, **labels))
    how = f'folders per split ({train_split}, {eval_split})'
  else:
    image_folder = _folder(root, image_dir, 'folder_image_dir')
    mask_folder = _folder(root, mask_dir, 'folder_mask_dir')
    if config.folder_split_dir:
      sources = []
      for split in (train_split, eval_split):
        listed = voc.read_split(root, config.folder_split_dir, split,
                                'folder_split_dir')
        listed = [_strip_ext(s, image_exts + mask_exts) for s in listed]
        _, images, masks = pair_folders(image_folder, mask_folder,
                                        stems=listed, where=f'split {split!r}',
                                        **common)
        sources.append(PairedFiles(images, masks, **labels))
      how = f'split files in {config.folder_split_dir}'
    else:
      stems, images, masks = pair_folders(image_folder, mask_folder, **common)
      train, evals = fraction_split(stems, config.val_fraction,
                                    config.split_seed)
      sources = [PairedFiles([images[i] for i in part],
                             [masks[i] for i in part], **labels)
                 for part in (train, evals)]
      how = (f'val_fraction={config.val_fraction}, '
             f'split_seed={config.split_seed}')
  logging.info('Segmentation folder %s: %d train / %d eval pairs from %s + '
               '%s (%s).', root, len(sources[0]), len(sources[1]), image_dir,
               mask_dir, how)
  return tuple(sources)


def class_names(num_classes: int) -> Tuple[str, ...]:
  """Default names: background/foreground for two classes."""
  if num_classes == 2:
    return ('background', 'foreground')
  return ('background',) + tuple(f'class_{i}' for i in range(1, num_classes))
