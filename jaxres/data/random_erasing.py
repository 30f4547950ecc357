"""Random erasing on normalised images, as TensorFlow ops stateless in a seed.

timm's RandomErasing with mode='pixel' (config.random_erasing = probability):
one rectangle, area 2-33.3 % of the image, aspect 0.3-3.3 log-uniform, 10
tries, filled with per-pixel, per-channel N(0, 1) values in the normalised
space. Applied by augment.augment_and_normalize after the policy and the
normalisation.
"""
import math

ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = (0.3, 1 / 0.3)
ERASE_TRIES = 10


def _tf():
  from jaxres.data import augment  # pylint: disable=g-import-not-at-top
  return augment._tf()  # pylint: disable=protected-access  (TF kept off GPUs)


def erase_window(seed, height, width):
  """(erase?, top, left, h, w): timm's rectangle sampler, 10 tries.

  ``erase`` is False when no try fits; the caller decides the probability.
  """
  tf = _tf()
  area_seed, aspect_seed, place_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = tf.random.stateless_uniform([ERASE_TRIES], area_seed, *ERASE_AREA)
  log_aspect = tf.random.stateless_uniform(
      [ERASE_TRIES], aspect_seed, math.log(ERASE_ASPECT[0]),
      math.log(ERASE_ASPECT[1]))
  target = area * h_f * w_f
  aspect = tf.exp(log_aspect)
  hs = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  ws = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  fits = tf.logical_and(hs < height, ws < width)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  h, w = hs[first], ws[first]
  place = tf.random.stateless_uniform([2], place_seed)
  top = tf.cast(place[0] * tf.cast(height - h + 1, tf.float32), tf.int32)
  left = tf.cast(place[1] * tf.cast(width - w + 1, tf.float32), tf.int32)
  return (tf.reduce_any(fits), tf.minimum(top, height - h),
          tf.minimum(left, width - w), h, w)


def random_erase(image, seed, probability: float):
  """With ``probability``, one rectangle of per-pixel N(0, 1) values."""
  tf = _tf()
  gate_seed, window_seed, fill_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  fits, top, left, h, w = erase_window(window_seed, height, width)
  erase = tf.logical_and(
      fits, tf.random.stateless_uniform([], gate_seed) < probability)

  def erased():  # Draws only the rectangle's h * w * 3 values.
    noise = tf.random.stateless_normal([h, w, shape[2]], fill_seed,
                                       dtype=image.dtype)
    padding = [[top, height - top - h], [left, width - left - w], [0, 0]]
    inside = tf.pad(tf.ones([h, w, 1], image.dtype), padding) > 0
    return tf.where(inside, tf.pad(noise, padding), image)

  return tf.cond(erase, erased, lambda: image)
