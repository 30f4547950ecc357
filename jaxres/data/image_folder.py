"""The file list of an image-folder split (torchvision ImageFolder layout).

Class ``i`` is the ``i``-th class folder name in sorted order; sub-folders of
a class folder are read too, symlinked ones included, each file once (a link
into the split folder or above it, e.g. a loop, is not followed); names
starting with '.' are not. Used by folder.py (see its docstring for the
layout and the pipeline).
"""
import concurrent.futures
import os
from typing import List, Optional, Tuple

from absl import logging
import numpy as np

from jaxres.data.errors import DatasetNotFoundError
from jaxres.data.errors import FolderLayoutError
from jaxres.data.errors import list_names

# torchvision's IMG_EXTENSIONS, compared case-insensitively.
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff',
              '.webp')


def layout_help(root: str, train_split: str, eval_split: str) -> str:
  return ('Expected an image folder (torchvision ImageFolder layout), with '
          'class = sorted class folder names:\n'
          f'  {root}/{train_split}/<class_name>/<image>.jpg\n'
          f'  {root}/{eval_split}/<class_name>/<image>.jpg\n'
          'Set config.data_dir to the root and config.train_split / '
          'config.eval_split to the split folder names.')


def _is_image(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTS)


def _inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _list_images(folder: str, split_folder: Optional[str] = None) -> List[str]:
  """Image paths under folder (recursively), sorted as torchvision does.

  Symlinked directories are followed, except into a directory already
  walked and into (or above) ``split_folder``, whose files the walk of their
  own class lists: each file is listed once and a link loop ends.
  """
  split_real = os.path.realpath(split_folder or folder)
  seen = {os.path.realpath(folder)}
  walked = []
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    keep = []
    for d in sorted(dirnames):
      if d.startswith('.'):
        continue
      path = os.path.join(dirpath, d)
      real = os.path.realpath(path)
      if real in seen or (os.path.islink(path) and (
          _inside(real, split_real) or _inside(split_real, real))):
        continue
      seen.add(real)
      keep.append(d)
    dirnames[:] = keep
    walked.append((dirpath, sorted(f for f in filenames if _is_image(f))))
  return [os.path.join(dirpath, f) for dirpath, files in sorted(walked)
          for f in files]


class ImageFolder:
  """The file list of one split: ``paths``, int32 ``labels``, ``class_names``.

  Raises DatasetNotFoundError if the split folder is missing or holds no
  images; class folders without images are kept (their index stays taken)
  and listed in ``empty_classes`` and the log.
  """

  def __init__(self, root: Optional[str], split: str, *, layout: str = '',
               pool: Optional[concurrent.futures.Executor] = None):
    self.split = split
    layout = layout or layout_help(root, split, split)
    if not root:
      raise DatasetNotFoundError(
          'config.data_dir must name the root of the image folder dataset.\n'
          + layout)
    if not os.path.isdir(root):
      raise DatasetNotFoundError(
          f'Image folder root {root} does not exist.\n' + layout)
    self.folder = os.path.join(root, split)
    if not os.path.isdir(self.folder):
      found = sorted(e.name for e in os.scandir(root)
                     if e.is_dir() and not e.name.startswith('.'))
      raise DatasetNotFoundError(
          f'Split folder {self.folder} not found; folders in {root}: '
          f'{found or "none"}.\n' + layout)

    entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
    self.class_names = tuple(e.name for e in entries
                             if e.is_dir() and not e.name.startswith('.'))
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if not self.class_names:
      if loose:
        raise DatasetNotFoundError(
            f'{self.folder} holds {len(loose)} images but no class folders: '
            'each image must sit in the folder of its class (ImageNet val, '
            'for one, comes flat and must first be sorted into its 1000 '
            'synset folders).\n' + layout)
      raise DatasetNotFoundError(
          f'{self.folder} holds no class folders.\n' + layout)
    if loose:
      logging.warning('%s: %d images outside the class folders are ignored '
                      '(%s).', self.folder, len(loose), list_names(loose, 3))

    map_fn = pool.map if pool is not None else map
    class_dirs = [os.path.join(self.folder, c) for c in self.class_names]
    per_class = list(map_fn(lambda d: _list_images(d, self.folder),
                            class_dirs))
    self.paths = [p for paths in per_class for p in paths]
    self.labels = np.repeat(np.arange(len(per_class), dtype=np.int32),
                            [len(paths) for paths in per_class])
    self.empty_classes = tuple(
        c for c, paths in zip(self.class_names, per_class) if not paths)
    if not self.paths:
      raise DatasetNotFoundError(
          f'The {len(self.class_names)} class folders of {self.folder} hold '
          f'no images (extensions {", ".join(IMAGE_EXTS)}).\n' + layout)
    if self.empty_classes:
      logging.warning(
          '%s: %d of %d class folders hold no images (their labels stay '
          'reserved): %s', self.folder, len(self.empty_classes),
          len(self.class_names), list_names(self.empty_classes))
    logging.info('%s: %d images in %d classes.', self.folder, len(self.paths),
                 len(self.class_names))

  def __len__(self) -> int:
    return len(self.paths)

  def name(self, index: int) -> str:
    return self.paths[index]

  def load(self, index: int) -> Tuple[str, int]:
    """(path, label): the transform decodes, as its crop decides the scale."""
    return self.paths[index], int(self.labels[index])

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
      f'{list_names(only_train) or "-"}\n'
      f'  only in {evals.split!r} ({len(only_eval)}): '
      f'{list_names(only_eval) or "-"}\n'
      'Give both splits the same class folders (an empty folder is fine for '
      'a class without examples).')
