"""Segmentation label checks: mask values, sizes and 0/255 binary masks.

Masks hold class indices 0..num_classes-1 and IGNORE_LABEL (255). Datasets
whose 0 means "unlabelled" (ADE20K) read them through ``reduce_zero_label``
first. The checks
run on a sample of the masks at start-up (``scan_labels``, which can also see
that all masks are 0/255 binaries) and on every mask as it is loaded
(``check_label``); the messages name the files and the fix. The scan also
counts the pixels of each class (``LabelStats``), for class weights.
"""
import dataclasses
from typing import Dict, Optional, Protocol, Sequence, Tuple

from absl import logging
import numpy as np

from jaxres.data import batching
from jaxres.data import IGNORE_LABEL
from jaxres.data.errors import BadImageError
from jaxres.data.errors import LabelError


class LabelSource(batching.Source, Protocol):
  """A segmentation source: also reads a label or an image size alone."""

  def load_label(self, index: int) -> np.ndarray:
    """uint8 [H, W] class indices (start-up scans)."""

  def image_size(self, index: int) -> Tuple[int, int]:
    """(height, width) of the image, cheaply (a header read)."""


# reduce_zero_label as a lookup table: 0 -> ignore, k -> k - 1, 255 stays.
_REDUCE_ZERO = np.concatenate([[IGNORE_LABEL], np.arange(254),
                               [IGNORE_LABEL]]).astype(np.uint8)


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
  """Label 0 ("other" in ADE20K) becomes ignore, label k becomes k - 1.

  mmsegmentation's reduce_zero_label: the 150 ADE20K classes are stored as
  1..150 with 0 for unlabelled pixels, and train as 0..149.
  """
  return _REDUCE_ZERO[mask]


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
      'class indices (a palette or grayscale PNG), not colours.' +
      (' JPEG masks change values near edges: save masks as PNG.'
       if any(n.lower().endswith(('.jpg', '.jpeg')) for n in by_file) else ''))


def binary_mask_error(num_masks: int, split: str) -> LabelError:
  return LabelError(
      f'All {num_masks} masks scanned in split {split!r} contain only the '
      'values 0 and 255: these look like binary masks saved as black/white '
      'images, not class indices. As they are, 255 is the ignore label and '
      'the model would learn background only. Set '
      'config.binary_mask_255_to_1=True to read 255 as class 1 (with '
      'config.num_classes=2; on the command line --config.'
      'binary_mask_255_to_1=True --config.num_classes=2), or re-save the '
      'masks with class indices (0 = background, 1 = foreground).')


def binary_255_to_1(mask: np.ndarray, name: str) -> np.ndarray:
  """A 0/255 mask as 0/1 (config.binary_mask_255_to_1); others raise."""
  if ((mask != 0) & (mask != IGNORE_LABEL)).any():
    raise LabelError(
        f'config.binary_mask_255_to_1=True, but {name} holds values '
        f'{np.unique(mask).tolist()}, not only 0 and 255: it is not a binary '
        'mask, so unset the flag.')
  return np.where(mask == IGNORE_LABEL, np.uint8(1), mask)


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


@dataclasses.dataclass(frozen=True)
class LabelStats:
  """Pixel counts of the scanned masks (labelled pixels only, no 255).

  class_pixels[c]: pixels of class c; image_pixels[c]: labelled pixels of the
  masks in which class c appears (median frequency balancing needs both).
  """
  class_pixels: np.ndarray  # int64 [num_classes]
  image_pixels: np.ndarray  # int64 [num_classes]
  num_masks: int
  num_files: int  # Masks in the split (num_masks of them were scanned).


def scan_labels(reader: batching.Reader, num_classes: int, *, max_files: int,
                seed: int, pool) -> LabelStats:
  """Checks all masks (or a fixed random sample of max_files) at start-up.

  Catches the common mistakes before the first step: out-of-range values (all
  offending files listed at once), image/mask size mismatches and 0/255 binary
  masks, which cannot be told apart from ignore borders one file at a time.
  ``reader.source`` is a LabelSource; unreadable files follow the reader's
  policy. Returns the pixel counts of the scanned masks.
  """
  source, split = reader.source, reader.split
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
      reader.unreadable(i, e)
      return None
    if tuple(label.shape) != tuple(hw):
      check_label(label, num_classes, source.name(i), hw, split)
    return np.bincount(label.reshape(-1), minlength=256)

  class_pixels = np.zeros(num_classes, np.int64)
  image_pixels = np.zeros(num_classes, np.int64)
  out_of_range = {}
  any_class = False
  any_ignore = False
  scanned = 0
  for i, counts in zip(indices, pool.map(scan, indices)):
    if counts is None:
      continue
    present = counts > 0
    scanned += 1
    class_counts = counts[:num_classes]
    class_pixels += class_counts
    image_pixels += np.where(class_counts > 0, class_counts.sum(), 0)
    values = np.flatnonzero(present)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
      out_of_range[source.name(i)] = bad.tolist()
    any_class |= bool(present[1:min(num_classes, IGNORE_LABEL)].any())
    any_ignore |= bool(present[IGNORE_LABEL])
  if out_of_range:
    raise out_of_range_error(out_of_range, num_classes, split)
  if scanned and any_ignore and not any_class:
    raise binary_mask_error(scanned, split)
  logging.info('Checked %d of %d masks of split %r.', scanned, n, split)
  return LabelStats(class_pixels, image_pixels, scanned, n)
