"""Training augmentations as TensorFlow ops, stateless in a seed.

One implementation for both classification pipelines: imagenet.py maps it
inside tf.data, folder.py calls it on each decoded crop (``NumpyAugment``).
Every random draw is a ``tf.random.stateless_*`` op of the example's seed,
which the pipelines derive from (seed, step, position in the global batch),
so a resumed run draws the same augmentation and the order does not depend
on the number of processes.

Order, after the random-resized crop, resize and flip (as timm's
``create_transform``): the policy on the uint8 image, ImageNet
normalisation, then random erasing on the normalised image.

Policies (config.augment):
  'randaugment'   timm's RandAugment with the increasing-severity op set
                  (``rand-m{M}-n{N}-mstd{S}-inc1``): N ops drawn with
                  replacement from 15, each applied with probability 0.5, at
                  level M on timm's 0-10 scale (plus Gaussian noise of std S
                  per op, clipped to [0, 10]; S = inf draws uniform [0, M]).
                  Level 0 is the identity for every op with a magnitude
                  except Posterize (4 bits kept at level 0, 0 bits at 10).
  'trivialaugment' torchvision's TrivialAugmentWide: one of 14 ops, always
                  applied, magnitude bin uniform in 0..30. Translation is
                  32/224 of the side (32 px at 224, as torchvision).
  'autoaugment'   torchvision's AutoAugment ImageNet policy (25 sub-policies
                  of two ops with their probabilities, magnitude bins 0..9).
The ops are augment_ops.py's: geometric ops (shear, translate, rotate)
sample bilinearly and fill the uncovered area with the ImageNet mean colour
(timm's fill); colour ops follow PIL's ImageEnhance / ImageOps on uint8
values.

Random erasing (config.random_erasing = probability): random_erasing.py.
"""
import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

from jaxres import data as data_lib
from jaxres.data import augment_ops as ops_lib
from jaxres.data import random_erasing

POLICIES = ('none', 'randaugment', 'trivialaugment', 'autoaugment')
INTERPOLATIONS = ('bilinear', 'bicubic')
MAX_LEVEL = 10.0  # timm's RandAugment magnitude scale (_LEVEL_DENOM).
RANDAUGMENT_OP_PROB = 0.5
TRIVIAL_BINS = 31
AUTOAUGMENT_BINS = 10


@functools.lru_cache(maxsize=None)
def _tf():
  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top
  return imagenet._tf()  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class Augment:
  """What to do to a training image after crop and flip (config fields)."""
  policy: str = 'none'
  randaugment_n: int = 2
  randaugment_m: float = 9.0
  randaugment_mstd: float = 0.0
  random_erasing: float = 0.0

  @classmethod
  def from_config(cls, config) -> 'Augment':
    return cls(policy=config.get('augment', 'none') or 'none',
               randaugment_n=int(config.get('randaugment_n', 2)),
               randaugment_m=float(config.get('randaugment_m', 9)),
               randaugment_mstd=float(config.get('randaugment_mstd', 0.0)),
               random_erasing=float(config.get('random_erasing', 0.0)))

  def __post_init__(self):
    if self.policy not in POLICIES:
      raise ValueError(f'config.augment={self.policy!r} is not one of '
                       f'{POLICIES}.')

  @property
  def active(self) -> bool:
    return self.policy != 'none' or self.random_erasing > 0


# ----------------------------------------------------------------------------
# Policies: (image, seed, augment) -> image, float32 holding uint8 values.
# ----------------------------------------------------------------------------

# timm's _RAND_INCREASING_TRANSFORMS, each as (op, value(level, sign, h, w))
# with level on the 0-10 scale and sign +-1.
_RANDAUGMENT = (
    ('auto_contrast', lambda l, s, h, w: 0.0),
    ('equalize', lambda l, s, h, w: 0.0),
    ('invert', lambda l, s, h, w: 0.0),
    ('rotate', lambda l, s, h, w: s * l / MAX_LEVEL * 30.0),
    ('posterize', lambda l, s, h, w: 4.0 - _floor(l / MAX_LEVEL * 4.0)),
    ('solarize', lambda l, s, h, w: 256.0 - _floor(l / MAX_LEVEL * 256.0)),
    ('solarize_add', lambda l, s, h, w: _floor(l / MAX_LEVEL * 110.0)),
    ('color', lambda l, s, h, w: 1.0 + s * l / MAX_LEVEL * 0.9),
    ('contrast', lambda l, s, h, w: 1.0 + s * l / MAX_LEVEL * 0.9),
    ('brightness', lambda l, s, h, w: 1.0 + s * l / MAX_LEVEL * 0.9),
    ('sharpness', lambda l, s, h, w: 1.0 + s * l / MAX_LEVEL * 0.9),
    ('shear_x', lambda l, s, h, w: s * l / MAX_LEVEL * 0.3),
    ('shear_y', lambda l, s, h, w: s * l / MAX_LEVEL * 0.3),
    ('translate_x', lambda l, s, h, w: s * l / MAX_LEVEL * 0.45 * w),
    ('translate_y', lambda l, s, h, w: s * l / MAX_LEVEL * 0.45 * h),
)
RANDAUGMENT_OPS = tuple(name for name, _ in _RANDAUGMENT)


def _floor(x):
  return _tf().floor(x)


def randaugment(image, seed, n: int, m: float, mstd: float = 0.0):
  tf = _tf()
  shape = tf.cast(tf.shape(image), tf.float32)
  h, w = shape[0], shape[1]
  uniform_seed, noise_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  # Per layer: op, apply, sign, level noise.
  u = tf.random.stateless_uniform([max(n, 1), 4], uniform_seed)
  noise = tf.random.stateless_normal([max(n, 1)], noise_seed)
  ops = tf.constant([ops_lib.OP_INDEX[name] for name in RANDAUGMENT_OPS],
                    tf.int32)
  for i in range(n):
    choice = tf.minimum(tf.cast(u[i, 0] * len(ops), tf.int32), len(ops) - 1)
    sign = tf.where(u[i, 2] < 0.5, -1.0, 1.0)
    if mstd == 0:
      level = tf.constant(float(m))
    elif math.isinf(mstd):
      level = u[i, 3] * m
    else:
      level = m + mstd * noise[i]
    level = tf.clip_by_value(level, 0.0, MAX_LEVEL)
    values = tf.stack([tf.cast(fn(level, sign, h, w), tf.float32)
                       for _, fn in _RANDAUGMENT])
    image = ops_lib.apply_op_if(image, u[i, 1] < RANDAUGMENT_OP_PROB,
                                tf.gather(ops, choice),
                                tf.gather(values, choice))
  return image


def _bins(top: float, bins: int) -> np.ndarray:
  return np.linspace(0.0, top, bins)


def _trivial_table():
  """torchvision TrivialAugmentWide: (op, magnitudes per bin, signed)."""
  b = np.arange(TRIVIAL_BINS)
  zeros = np.zeros(TRIVIAL_BINS)
  return (
      ('identity', zeros, False),
      ('shear_x', _bins(0.99, TRIVIAL_BINS), True),
      ('shear_y', _bins(0.99, TRIVIAL_BINS), True),
      ('translate_x', _bins(32.0, TRIVIAL_BINS), True),
      ('translate_y', _bins(32.0, TRIVIAL_BINS), True),
      ('rotate', _bins(135.0, TRIVIAL_BINS), True),
      ('brightness', _bins(0.99, TRIVIAL_BINS), True),
      ('color', _bins(0.99, TRIVIAL_BINS), True),
      ('contrast', _bins(0.99, TRIVIAL_BINS), True),
      ('sharpness', _bins(0.99, TRIVIAL_BINS), True),
      ('posterize', 8 - np.round(b / ((TRIVIAL_BINS - 1) / 6)), False),
      ('solarize', np.linspace(255.0, 0.0, TRIVIAL_BINS), False),
      ('auto_contrast', zeros, False),
      ('equalize', zeros, False),
  )


_ENHANCE = ('brightness', 'color', 'contrast', 'sharpness')


def _signed_values(table, sign):
  """[ops, bins] magnitudes, signed ones times ``sign``, enhance ops + 1."""
  tf = _tf()
  rows = []
  for name, magnitudes, signed in table:
    row = tf.constant(magnitudes, tf.float32)
    if signed:
      row = row * sign
    if name in _ENHANCE:
      row = row + 1.0
    rows.append(row)
  return tf.stack(rows)


def trivialaugment(image, seed):
  tf = _tf()
  side = tf.cast(tf.shape(image)[0], tf.float32)
  table = _trivial_table()
  u = tf.random.stateless_uniform([3], seed)
  choice = tf.minimum(tf.cast(u[0] * len(table), tf.int32), len(table) - 1)
  level = tf.minimum(tf.cast(u[1] * TRIVIAL_BINS, tf.int32), TRIVIAL_BINS - 1)
  sign = tf.where(u[2] < 0.5, -1.0, 1.0)
  values = _signed_values(table, sign)
  # Translations are 32/224 of the side: 32 px at 224 as in torchvision.
  is_translate = tf.constant(
      [name.startswith('translate') for name, _, _ in table])
  values = tf.where(is_translate[:, None], values * side / 224.0, values)
  ops = tf.constant([ops_lib.OP_INDEX[name] for name, _, _ in table],
                    tf.int32)
  return ops_lib.apply_op(image, tf.gather(ops, choice),
                          values[choice, level])


# torchvision's AutoAugmentPolicy.IMAGENET: ((op, probability, bin), ...).
AUTOAUGMENT_IMAGENET = (
    (('posterize', 0.4, 8), ('rotate', 0.6, 9)),
    (('solarize', 0.6, 5), ('auto_contrast', 0.6, None)),
    (('equalize', 0.8, None), ('equalize', 0.6, None)),
    (('posterize', 0.6, 7), ('posterize', 0.6, 6)),
    (('equalize', 0.4, None), ('solarize', 0.2, 4)),
    (('equalize', 0.4, None), ('rotate', 0.8, 8)),
    (('solarize', 0.6, 3), ('equalize', 0.6, None)),
    (('posterize', 0.8, 5), ('equalize', 1.0, None)),
    (('rotate', 0.2, 3), ('solarize', 0.6, 8)),
    (('equalize', 0.6, None), ('posterize', 0.4, 6)),
    (('rotate', 0.8, 8), ('color', 0.4, 0)),
    (('rotate', 0.4, 9), ('equalize', 0.6, None)),
    (('equalize', 0.0, None), ('equalize', 0.8, None)),
    (('invert', 0.6, None), ('equalize', 1.0, None)),
    (('color', 0.6, 4), ('contrast', 1.0, 8)),
    (('rotate', 0.8, 8), ('color', 1.0, 2)),
    (('color', 0.8, 8), ('solarize', 0.8, 7)),
    (('sharpness', 0.4, 7), ('invert', 0.6, None)),
    (('shear_x', 0.6, 5), ('equalize', 1.0, None)),
    (('color', 0.4, 0), ('equalize', 0.6, None)),
    (('equalize', 0.4, None), ('solarize', 0.2, 4)),
    (('solarize', 0.6, 5), ('auto_contrast', 0.6, None)),
    (('invert', 0.6, None), ('equalize', 1.0, None)),
    (('color', 0.6, 4), ('contrast', 1.0, 8)),
    (('equalize', 0.8, None), ('equalize', 0.6, None)),
)


def _autoaugment_magnitude(name: str, magnitude_bin):
  """Unsigned magnitude of torchvision's 10-bin AutoAugment space (the
  ImageNet policy has no translations, so no image size)."""
  if magnitude_bin is None:
    return 0.0
  fraction = magnitude_bin / (AUTOAUGMENT_BINS - 1)
  if name == 'posterize':
    return 8.0 - round(magnitude_bin / ((AUTOAUGMENT_BINS - 1) / 4))
  if name == 'solarize':
    return 255.0 * (1.0 - fraction)
  tops = dict(shear_x=0.3, shear_y=0.3, rotate=30.0, brightness=0.9,
              color=0.9, contrast=0.9, sharpness=0.9)
  return tops[name] * fraction


def _autoaugment_arrays():
  """[25, 2] op indices, probabilities, magnitudes, signed and enhance."""
  names = [[name for name, _, _ in sub] for sub in AUTOAUGMENT_IMAGENET]
  ops = np.array([[ops_lib.OP_INDEX[n] for n in row] for row in names],
                 np.int32)
  probs = np.array([[p for _, p, _ in sub] for sub in AUTOAUGMENT_IMAGENET],
                   np.float32)
  magnitudes = np.array(
      [[_autoaugment_magnitude(n, b) for n, _, b in sub]
       for sub in AUTOAUGMENT_IMAGENET], np.float32)
  signed = np.array([[n in ('shear_x', 'shear_y', 'rotate') + _ENHANCE
                      for n in row] for row in names])
  enhance = np.array([[n in _ENHANCE for n in row] for row in names])
  return ops, probs, magnitudes, signed, enhance


def autoaugment(image, seed):
  tf = _tf()
  ops, probs, magnitudes, signed, enhance = (
      tf.constant(a) for a in _autoaugment_arrays())
  u = tf.random.stateless_uniform([5], seed)
  sub = tf.minimum(tf.cast(u[0] * len(ops), tf.int32), len(ops) - 1)
  for i in range(2):
    sign = tf.where(u[3 + i] < 0.5, -1.0, 1.0)
    value = tf.gather(magnitudes[:, i], sub)
    value = tf.where(tf.gather(signed[:, i], sub), value * sign, value)
    value = tf.where(tf.gather(enhance[:, i], sub), value + 1.0, value)
    image = ops_lib.apply_op_if(
        image, u[1 + i] < tf.gather(probs[:, i], sub),
        tf.gather(ops[:, i], sub), value)
  return image


def apply_policy(image, seed, augment: Augment):
  """The policy on a uint8 (or uint8-valued float) [H, W, 3] image.

  Returns float32 holding uint8 values.
  """
  tf = _tf()
  image = tf.cast(image, tf.float32)
  if augment.policy == 'randaugment':
    return randaugment(image, seed, augment.randaugment_n,
                       augment.randaugment_m, augment.randaugment_mstd)
  if augment.policy == 'trivialaugment':
    return trivialaugment(image, seed)
  if augment.policy == 'autoaugment':
    return autoaugment(image, seed)
  return image


# ----------------------------------------------------------------------------
# Entry points for the pipelines.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def channel_planes(height: int, width: int):
  """float32 [H, W, 3] ImageNet mean and std, one value per pixel."""
  shape = (height, width, 3)
  return tuple(np.broadcast_to(np.asarray(v, np.float32), shape).copy()
               for v in (data_lib.MEAN_RGB, data_lib.STDDEV_RGB))


def normalize(image):
  """float32 (image - mean) / std.

  For a static [H, W, 3] shape the mean and std are whole planes: the same
  float32 subtract and divide, bit for bit, as broadcasting [3], which
  TensorFlow runs several times slower.
  """
  tf = _tf()
  image = tf.cast(image, tf.float32)
  if image.shape.rank == 3 and image.shape.is_fully_defined():
    mean, std = channel_planes(image.shape[0], image.shape[1])
  else:
    mean, std = data_lib.MEAN_RGB, data_lib.STDDEV_RGB
  return (image - tf.constant(mean)) / tf.constant(std)


def augment_and_normalize(image, seed, augment: Augment):
  """uint8-valued [H, W, 3] -> policy -> normalise -> erase, float32.

  ``seed``: int [2] tensor, a function of (seed, step, example position).
  """
  tf = _tf()
  policy_seed, erase_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = normalize(apply_policy(image, policy_seed, augment))
  if augment.random_erasing > 0:
    image = random_erasing.random_erase(image, erase_seed,
                                        augment.random_erasing)
  return image


class NumpyAugment:
  """``augment(uint8 [S, S, 3] array, seed (2 ints)) -> float32 normalised``.

  For the numpy pipelines (folder.py): one traced function for all image
  sizes; safe to call from several threads (TF releases the GIL while it
  runs).
  """

  def __init__(self, augment: Augment):
    tf = _tf()
    self.augment = augment
    # Traced here, once: threads calling an untraced tf.function together
    # would each trace it.
    self._fn = tf.function(
        lambda image, seed: augment_and_normalize(image, seed, augment),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                         tf.TensorSpec([2], tf.int64)]).get_concrete_function()

  def __call__(self, image: np.ndarray, seed: Sequence[int]) -> np.ndarray:
    tf = _tf()
    out = self._fn(tf.constant(image, tf.uint8),
                   tf.constant(np.asarray(seed, np.int64)))
    return out.numpy()


@functools.lru_cache(maxsize=None)
def numpy_augment(augment: Augment) -> NumpyAugment:
  """A NumpyAugment per distinct Augment, traced once per process."""
  return NumpyAugment(augment)


def seed_from_rng(rng: np.random.Generator) -> np.ndarray:
  """Two int64 seeds drawn from an example's numpy generator."""
  return rng.integers(0, 2**62, size=2, dtype=np.int64)
