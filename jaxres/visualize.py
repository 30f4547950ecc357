"""Colour masks and overlays for segmentation (numpy uint8 in, uint8 out)."""
from typing import Optional, Sequence

import numpy as np

IGNORE_LABEL = 255


def voc_palette(num_colors: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map [num_colors, 3] uint8.

  Class k's colour spreads the bits of k over the high bits of R, G and B;
  0 is black (background) and 255 (ignore) is the VOC border colour
  (224, 224, 192).
  """
  palette = np.zeros((num_colors, 3), np.uint8)
  for k in range(num_colors):
    c, r, g, b = k, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    palette[k] = (r, g, b)
  return palette


PALETTE = voc_palette()


def colorize(mask: np.ndarray, palette: Optional[np.ndarray] = None) -> np.ndarray:
  """Class indices [H, W] (0..255) -> colours [H, W, 3] uint8."""
  palette = PALETTE if palette is None else np.asarray(palette, np.uint8)
  return palette[np.clip(np.asarray(mask), 0, len(palette) - 1).astype(np.int64)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
            palette: Optional[np.ndarray] = None,
            ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """Blends the colour mask over an RGB uint8 image [H, W, 3].

  Pixels labelled `ignore_label` show the image unchanged.
  """
  image = np.asarray(image)
  mask = np.asarray(mask)
  if image.shape[:2] != mask.shape:
    raise ValueError(f'Image {image.shape[:2]} and mask {mask.shape} sizes differ.')
  colour = colorize(mask, palette).astype(np.float32)
  blended = (1 - alpha) * image.astype(np.float32) + alpha * colour
  blended = np.where((mask == ignore_label)[..., None], image, blended)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def to_uint8_image(image: np.ndarray, mean: Sequence[float],
                   std: Sequence[float]) -> np.ndarray:
  """Undoes `(pixel / 255 - mean) / std` style normalisation to uint8.

  `mean` and `std` are in the units of the normalised input: pass them scaled
  to [0, 255] pixels (e.g. mean 123.7, std 58.4) or [0, 1] pixels; the range
  is detected from `mean`.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  pixels = np.asarray(image, np.float32) * std + mean
  if np.all(mean <= 1.0):
    pixels = pixels * 255.0
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def save_mask_png(path: str, mask: np.ndarray, palette: Optional[np.ndarray] = None):
  """Writes class indices as a palette PNG: it shows the colours, and reading
  it back (PIL mode 'P') gives the class indices, as VOC's masks do."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  palette = PALETTE if palette is None else np.asarray(palette, np.uint8)
  mask = np.ascontiguousarray(mask, np.uint8)
  img = Image.frombytes('P', (mask.shape[1], mask.shape[0]), mask.tobytes())
  img.putpalette(palette.reshape(-1).tolist())
  img.save(path)


def save_rgb_png(path: str, image: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(path)


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
  """Places RGB uint8 images of equal height in one row with white gaps."""
  height = images[0].shape[0]
  pad = np.full((height, gap, 3), 255, np.uint8)
  row = []
  for i, img in enumerate(images):
    if img.shape[0] != height:
      raise ValueError('side_by_side needs images of equal height.')
    row.extend([pad, img] if i else [img])
  return np.concatenate(row, axis=1)
