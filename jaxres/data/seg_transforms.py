"""Segmentation transforms: random scale / pad / crop / flip, and eval.

Each takes a decoded RGB image (PIL, or uint8 [H, W, 3] for in-memory data)
and its uint8 class-index label, and writes one example into its slots of
the batch arrays (batching.py). The image is resized as a PIL image and
becomes a numpy array once, after the resize; the label is indexed as uint8
and widened to int32 only when written into its slot.

Pixels are normalised straight into their slot by
``jaxres.data.normalize_into`` (rows of width * 3 values, not a 3-vector
broadcast per pixel, which numpy runs about ten times slower).
"""
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from jaxres import data as data_lib

# A decoded RGB image: PIL (files) or uint8 [H, W, 3] (in-memory data).
ImageLike = Union[Image.Image, np.ndarray]


def _pil(image: ImageLike) -> Image.Image:
  return image if isinstance(image, Image.Image) else Image.fromarray(image)


def train_transform(image: ImageLike, label: np.ndarray,
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
    image: RGB, PIL or uint8 [H, W, 3]; label: uint8 [H, W].
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
  img = np.asarray(_pil(image).resize((vw, vh), Image.BILINEAR, box=box))
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
  data_lib.normalize_into(out_image[:vh, cols], img)
  out_label[:vh, cols] = lab


def eval_transform(image: ImageLike, label: np.ndarray,
                   eval_size: Optional[Tuple[int, int]], out_image: np.ndarray,
                   out_label: np.ndarray) -> None:
  """Full resolution (top-left of a padded slot) or resized to eval_size.

  The label is never resized: scoring happens at the original resolution.
  ``image`` is RGB, PIL or uint8 [H, W, 3].
  """
  h, w = label.shape
  if eval_size is None:
    data_lib.normalize_into(out_image[:h, :w], np.asarray(image))
  else:
    eh, ew = eval_size
    resized = np.asarray(_pil(image).resize((ew, eh), Image.BILINEAR))
    data_lib.normalize_into(out_image, resized)
  out_label[:h, :w] = label
