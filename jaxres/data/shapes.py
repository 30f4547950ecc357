"""Embedded "shapes" datasets, drawn procedurally with numpy.

The project ships no image files: every run regenerates the same images from a
seed in a few seconds. Each image is a shape of one of ten kinds, with a random
colour, size and position, on a background of smooth colour noise, pixel noise
and a few distractor lines. Colour and position carry no class information, so
a linear model on pixels stays far from a convolutional network.

  images, labels = make_classification(10_000, image_size=32, seed=0)
  images, masks = make_segmentation(1_000, image_size=64, seed=0, num_classes=6)

Segmentation masks hold the class index per pixel (0 = background, class k =
shape kind ``CLASS_NAMES[k - 1]``); pixels that a shape's edge only partly
covers are 255 ("ignore"), like the object borders of PASCAL VOC.
"""
from typing import Optional, Tuple

import numpy as np

CLASS_NAMES = (
    'circle', 'square', 'triangle', 'cross', 'ring', 'horizontal_stripes',
    'vertical_stripes', 'diagonal_stripes', 'checkerboard', 'diamond')
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255
# Examples drawn at a time: keeps the float32 work arrays in cache.
_CHUNK = 1024
_TEXTURES = frozenset(
    ('horizontal_stripes', 'vertical_stripes', 'diagonal_stripes',
     'checkerboard'))


# ----------------------------------------------------------------------------
# Shape rasterisation.
# ----------------------------------------------------------------------------


def _sample_params(rng, n, height, width, radius_range):
  """Per-shape geometry: centre, radius, texture period/phase, rotation."""
  size = min(height, width)
  lo, hi = radius_range
  r = rng.uniform(lo, hi, n) * size
  margin = r + 1.0  # Shapes lie fully inside the image.
  return dict(
      r=r,
      cy=rng.uniform(margin, height - margin),
      cx=rng.uniform(margin, width - margin),
      # Stripe period scales with the image so textures stay resolvable.
      period=rng.uniform(3.5, 6.0, n) * max(size / 32, 1.0),
      phase_y=rng.uniform(0, 1, n),
      phase_x=rng.uniform(0, 1, n),
      theta=rng.uniform(0, 2 * np.pi, n),
      diag_sign=rng.choice([-1.0, 1.0], n),
  )


def _coverage(kind, p, height, width, supersample):
  """Fraction of each pixel covered by the shape, and by its painted part.

  Args:
    kind: an entry of ``CLASS_NAMES``.
    p: dict of [n] parameter arrays (see ``_sample_params``).
    height, width: image size.
    supersample: samples per pixel side; 1 gives hard 0/1 masks.

  Returns:
    (region, paint), float32 [n, height, width] in [0, 1]. ``region`` is the
    area the shape occupies (its segmentation mask); ``paint`` is the part drawn
    in the foreground colour (equal to ``region`` except for textures, where
    it is the stripes or checks inside a square patch).
  """
  s = supersample
  offsets = (np.arange(s) + 0.5) / s
  ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
  xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
  col = lambda a: np.asarray(a, np.float32)[:, None, None]
  dy = ys[None, :, None] - col(p['cy'])
  dx = xs[None, None, :] - col(p['cx'])
  r = col(p['r'])

  if kind == 'circle':
    region = dx**2 + dy**2 <= r**2
  elif kind == 'square':
    region = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
  elif kind == 'diamond':
    region = np.abs(dx) + np.abs(dy) <= 1.15 * r
  elif kind == 'triangle':
    # Equilateral, any rotation: inside all three edge half-planes.
    theta = col(p['theta'])
    region = np.ones(np.broadcast_shapes(dx.shape, dy.shape), bool)
    for k in range(3):
      a = theta + k * 2 * np.pi / 3
      region &= dx * np.cos(a) + dy * np.sin(a) <= 0.6 * r
  elif kind == 'cross':
    half_width = np.maximum(0.3 * r, 1.0)
    region = (((np.abs(dx) <= half_width) & (np.abs(dy) <= r)) |
              ((np.abs(dy) <= half_width) & (np.abs(dx) <= r)))
  elif kind == 'ring':
    d2 = dx**2 + dy**2
    region = (d2 <= r**2) & (d2 >= (0.55 * r)**2)
  elif kind in _TEXTURES:
    region = np.maximum(np.abs(dx), np.abs(dy)) <= 0.9 * r
    period = col(p['period'])
    u = dy / period + col(p['phase_y'])
    v = dx / period + col(p['phase_x'])
    if kind == 'horizontal_stripes':
      paint = np.floor(2 * u) % 2 == 0
    elif kind == 'vertical_stripes':
      paint = np.floor(2 * v) % 2 == 0
    elif kind == 'diagonal_stripes':
      w = (v + col(p['diag_sign']) * u) / np.sqrt(2)
      paint = np.floor(2 * w) % 2 == 0
    else:  # checkerboard
      paint = (np.floor(2 * u) + np.floor(2 * v)) % 2 == 0
    paint = paint & region
  else:
    raise ValueError(f'Unknown shape kind {kind!r}; known: {CLASS_NAMES}.')
  if kind not in _TEXTURES:
    paint = region

  def pool(mask):
    n = mask.shape[0]
    mask = mask.reshape(n, height, s, width, s).astype(np.float32)
    return mask.mean(axis=(2, 4))

  return pool(region), pool(paint)


def _contrasting_colour(rng, base):
  """Colours at least 70 levels away from ``base`` in every channel."""
  offset = rng.uniform(70, 186, base.shape)
  return np.mod(base + offset, 256.0)


def _subset(p, idx):
  return {k: v[idx] for k, v in p.items()}


# ----------------------------------------------------------------------------
# Background: smooth colour noise plus distractor lines.
# ----------------------------------------------------------------------------


def _interp_matrix(out_size, in_size):
  """[out, in] bilinear interpolation weights (align_corners=True)."""
  pos = np.linspace(0, in_size - 1, out_size)
  lo = np.clip(np.floor(pos).astype(int), 0, in_size - 2)
  frac = pos - lo
  m = np.zeros((out_size, in_size), np.float32)
  m[np.arange(out_size), lo] = 1 - frac
  m[np.arange(out_size), lo + 1] = frac
  return m


def _background(rng, n, height, width, base):
  """[n, H, W, 3] float32 textured background around colour ``base`` [n, 3]."""
  grid = rng.uniform(-40, 40, (n, 3, 4, 4)).astype(np.float32)
  smooth = _interp_matrix(height, 4) @ grid @ _interp_matrix(width, 4).T
  images = (base[:, :, None, None] + smooth).transpose(0, 2, 3, 1)
  images = np.ascontiguousarray(images, np.float32)

  # Up to two thin line segments per image, in random colours.
  ys = np.arange(height, dtype=np.float32)[None, :, None] + 0.5
  xs = np.arange(width, dtype=np.float32)[None, None, :] + 0.5
  size = min(height, width)
  for _ in range(2):
    present = rng.uniform(size=n) < 0.6
    col = lambda a: a.astype(np.float32)[:, None, None]
    py = col(rng.uniform(0, height, n))
    px = col(rng.uniform(0, width, n))
    phi = col(rng.uniform(0, np.pi, n))
    length = col(rng.uniform(0.3, 0.8, n) * size)
    colour = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    across = np.abs((xs - px) * np.sin(phi) - (ys - py) * np.cos(phi))
    along = np.abs((xs - px) * np.cos(phi) + (ys - py) * np.sin(phi))
    line = (across < 0.5) & (along < length / 2) & present[:, None, None]
    images = np.where(line[..., None], colour[:, None, None, :], images)
  return images


def _finish(rng, images, noise_std):
  images += rng.standard_normal(images.shape, np.float32) * noise_std
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _hw(image_size) -> Tuple[int, int]:
  if isinstance(image_size, int):
    return image_size, image_size
  height, width = image_size
  return int(height), int(width)


# ----------------------------------------------------------------------------
# Public generators.
# ----------------------------------------------------------------------------


def make_classification(num_examples: int,
                        image_size=32,
                        seed: int = 0,
                        noise_std: float = 8.0):
  """Draws a balanced 10-class shapes classification set.

  Args:
    num_examples: number of images.
    image_size: int or (height, width).
    seed: the images are a pure function of (num_examples, image_size, seed).
    noise_std: std of the Gaussian pixel noise, in 0-255 levels.

  Returns:
    images uint8 [N, H, W, 3] and labels int32 [N] in [0, 10); every class
    appears num_examples // 10 or one more times.
  """
  height, width = _hw(image_size)
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_examples) % NUM_CLASSES)
  labels = labels.astype(np.int32)
  images = np.empty((num_examples, height, width, 3), np.uint8)
  for start in range(0, num_examples, _CHUNK):
    chunk = slice(start, start + _CHUNK)
    images[chunk] = _classification_chunk(rng, labels[chunk], height, width,
                                          noise_std)
  return images, labels


def _classification_chunk(rng, labels, height, width, noise_std):
  n = labels.shape[0]
  bg = rng.uniform(0, 255, (n, 3))
  fg = _contrasting_colour(rng, bg)
  params = _sample_params(rng, n, height, width, (0.18, 0.34))
  images = _background(rng, n, height, width, bg)
  for label, kind in enumerate(CLASS_NAMES):
    idx = np.flatnonzero(labels == label)
    if idx.size == 0:
      continue
    _, paint = _coverage(kind, _subset(params, idx), height, width, 1)
    images[idx] = np.where(paint[..., None] > 0, fg[idx, None, None, :],
                           images[idx])
  return _finish(rng, images, noise_std)


def make_segmentation(num_examples: int,
                      image_size=64,
                      seed: int = 0,
                      num_classes: int = 6,
                      max_shapes: int = 4,
                      ignore_borders: bool = True,
                      noise_std: float = 8.0):
  """Draws images with 1..max_shapes overlapping shapes and per-pixel masks.

  Args:
    num_examples: number of images.
    image_size: int or (height, width).
    seed: the data are a pure function of all arguments.
    num_classes: classes including background, 2..11. Class k >= 1 is the
      shape kind ``CLASS_NAMES[k - 1]``.
    max_shapes: most shapes in one image (later ones occlude earlier ones).
    ignore_borders: mark pixels that a shape edge covers only partly as 255.
      Otherwise such pixels take the class covering most of them.
    noise_std: std of the Gaussian pixel noise, in 0-255 levels.

  Returns:
    images uint8 [N, H, W, 3] and masks uint8 [N, H, W].
  """
  if not 2 <= num_classes <= NUM_CLASSES + 1:
    raise ValueError(
        f'num_classes must be in [2, {NUM_CLASSES + 1}] (background + shape '
        f'kinds), got {num_classes}.')
  height, width = _hw(image_size)
  rng = np.random.default_rng(seed)
  images = np.empty((num_examples, height, width, 3), np.uint8)
  masks = np.empty((num_examples, height, width), np.uint8)
  for start in range(0, num_examples, _CHUNK):
    n = min(_CHUNK, num_examples - start)
    chunk = slice(start, start + n)
    images[chunk], masks[chunk] = _segmentation_chunk(
        rng, n, height, width, num_classes, max_shapes, ignore_borders,
        noise_std)
  return images, masks


def _segmentation_chunk(rng, n, height, width, num_classes, max_shapes,
                        ignore_borders, noise_std):
  bg = rng.uniform(0, 255, (n, 3))
  images = _background(rng, n, height, width, bg)
  masks = np.zeros((n, height, width), np.uint8)
  num_shapes = rng.integers(1, max_shapes + 1, n)
  for slot in range(max_shapes):
    present = slot < num_shapes
    classes = rng.integers(1, num_classes, n)
    fg = _contrasting_colour(rng, bg)
    fill = _contrasting_colour(rng, fg)
    params = _sample_params(rng, n, height, width, (0.10, 0.25))
    for cls in range(1, num_classes):
      idx = np.flatnonzero(present & (classes == cls))
      if idx.size == 0:
        continue
      kind = CLASS_NAMES[cls - 1]
      region, paint = _coverage(kind, _subset(params, idx), height, width, 2)
      sub = images[idx]
      if kind in _TEXTURES:
        # Texture patches get a second colour between the stripes, so the
        # patch (not just its stripes) is the object.
        sub += region[..., None] * (fill[idx, None, None, :] - sub)
      sub += paint[..., None] * (fg[idx, None, None, :] - sub)
      images[idx] = sub
      m = masks[idx]
      if ignore_borders:
        m[region >= 1.0] = cls
        m[(region > 0) & (region < 1)] = IGNORE_LABEL
      else:
        m[region >= 0.5] = cls
      masks[idx] = m
  return _finish(rng, images, noise_std), masks


def class_names(num_classes: Optional[int] = None):
  """Names for segmentation classes: ('background', 'circle', ...)."""
  names = ('background',) + CLASS_NAMES
  return names if num_classes is None else names[:num_classes]
