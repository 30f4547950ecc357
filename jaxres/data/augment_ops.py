"""The image ops of augment.py's policies, as TensorFlow ops.

Each op maps a float32 [H, W, 3] image holding uint8 values (0-255 integers)
and a value in the op's own units (degrees, shear factor, pixels, enhance
factor, bits, threshold) to the same. Colour ops follow PIL's ImageEnhance /
ImageOps on uint8 values (tests/test_augment.py compares them); geometric
ops sample bilinearly with PIL's pixel convention and fill the uncovered
area with the ImageNet mean colour (timm's fill). ``apply_op`` picks one by
index with a single traced dispatch shared by all policies.
"""
import functools
import math
from typing import Callable, Tuple

from jaxres import data as data_lib


@functools.lru_cache(maxsize=None)
def _tf():
  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top
  return imagenet._tf()  # pylint: disable=protected-access


def _to_uint8_values(image):
  tf = _tf()
  return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _affine(image, transform):
  """Samples input (a0 x + a1 y + a2, b0 x + b1 y + b2) for output (x, y).

  Coordinates as PIL's Image.transform: continuous, pixel centres at +0.5.
  Shifted by the mean so the uncovered area gets the mean colour through
  the transform's scalar fill (zero), blended bilinearly at the border.
  """
  tf = _tf()
  mean = tf.constant(data_lib.MEAN_RGB, tf.float32)
  a0, a1, a2, b0, b1, b2 = [tf.cast(t, tf.float32) for t in transform]
  # TF samples at pixel indices: move both ends by half a pixel.
  transform = tf.stack([a0, a1, a2 + 0.5 * (a0 + a1 - 1), b0, b1,
                        b2 + 0.5 * (b0 + b1 - 1), 0.0, 0.0])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=(image - mean)[None], transforms=transform[None],
      output_shape=tf.shape(image)[:2], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='CONSTANT')[0]
  return _to_uint8_values(out + mean)


def shear_x(image, v):
  return _affine(image, [1.0, v, 0.0, 0.0, 1.0, 0.0])


def shear_y(image, v):
  return _affine(image, [1.0, 0.0, 0.0, v, 1.0, 0.0])


def translate_x(image, pixels):
  return _affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0])


def translate_y(image, pixels):
  return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels])


def rotate(image, degrees):
  """Counter-clockwise by ``degrees`` about the image centre."""
  tf = _tf()
  shape = tf.cast(tf.shape(image), tf.float32)
  cy, cx = shape[0] / 2, shape[1] / 2
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180)
  c, s = tf.cos(theta), tf.sin(theta)
  return _affine(image, [c, -s, cx - c * cx + s * cy,
                         s, c, cy - s * cx - c * cy])


def _blend(degenerate, image, factor):
  """PIL ImageEnhance: degenerate + factor (image - degenerate)."""
  return _to_uint8_values(degenerate + factor * (image - degenerate))


def _gray(image):
  """PIL's 'L' conversion (ITU-R 601-2 luma), [H, W, 1]."""
  tf = _tf()
  weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
  return tf.round(tf.reduce_sum(image * weights, -1, keepdims=True))


def color(image, factor):
  return _blend(_gray(image), image, factor)


def contrast(image, factor):
  tf = _tf()
  mean = tf.floor(tf.reduce_mean(_gray(image)) + 0.5)
  return _blend(mean, image, factor)


def brightness(image, factor):
  return _blend(0.0, image, factor)


def sharpness(image, factor):
  """PIL's SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1) / 13; borders unchanged."""
  tf = _tf()
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(
      image[None], kernel, [1, 1, 1, 1], 'VALID')[0])
  degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  interior = tf.pad(tf.ones_like(smooth[..., :1]), [[1, 1], [1, 1], [0, 0]])
  degenerate = interior * degenerate + (1 - interior) * image
  return _blend(degenerate, image, factor)


def posterize(image, bits):
  """Keeps the ``bits`` most significant bits of each value."""
  tf = _tf()
  shift = 8 - tf.cast(bits, tf.int32)
  values = tf.cast(image, tf.int32)
  return tf.cast(tf.bitwise.left_shift(
      tf.bitwise.right_shift(values, shift), shift), tf.float32)


def solarize(image, threshold):
  """Inverts the values >= threshold."""
  tf = _tf()
  return tf.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, addition, threshold=128.0):
  tf = _tf()
  return tf.where(image < threshold,
                  tf.minimum(image + tf.round(addition), 255.0), image)


def auto_contrast(image, _=None):
  """Per channel: stretches [min, max] to [0, 255] (PIL, cutoff 0)."""
  tf = _tf()
  lo = tf.reduce_min(image, [0, 1])
  hi = tf.reduce_max(image, [0, 1])
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  stretched = tf.floor((image - lo) * scale)
  return tf.clip_by_value(tf.where(hi > lo, stretched, image), 0.0, 255.0)


def equalize(image, _=None):
  """Per-channel histogram equalisation (PIL ImageOps.equalize)."""
  tf = _tf()

  def channel(values):
    values = tf.cast(values, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256,
                            maxlength=256)
    last = tf.gather(hist, tf.reduce_max(values))  # Count of the top value.
    step = (tf.reduce_sum(hist) - last) // 255
    before = tf.cumsum(hist, exclusive=True)
    lut = tf.minimum((before + step // 2) // tf.maximum(step, 1), 255)
    return tf.where(step > 0, tf.gather(lut, values), values)

  return tf.cast(tf.stack([channel(image[..., c]) for c in range(3)], -1),
                 tf.float32)


def invert(image, _=None):
  return 255.0 - image


def identity(image, _=None):
  return image


# The op index space shared by all policies; values are in each op's units
# (degrees, shear factor, pixels, enhance factor, bits, threshold).
OPS: Tuple[Tuple[str, Callable], ...] = (
    ('identity', identity), ('auto_contrast', auto_contrast),
    ('equalize', equalize), ('invert', invert), ('rotate', rotate),
    ('posterize', posterize), ('solarize', solarize),
    ('solarize_add', solarize_add), ('color', color), ('contrast', contrast),
    ('brightness', brightness), ('sharpness', sharpness),
    ('shear_x', shear_x), ('shear_y', shear_y), ('translate_x', translate_x),
    ('translate_y', translate_y))
OP_INDEX = {name: i for i, (name, _) in enumerate(OPS)}


@functools.lru_cache(maxsize=None)
def _op_function():
  """One traced dispatch over OPS, shared by every call and every pipeline
  (tracing the 16 branches at each use would cost seconds per pipeline)."""
  tf = _tf()

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, 3], tf.float32),
      tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float32)])
  def dispatch(image, op, value):
    branches = [functools.partial(lambda fn: fn(image, value), fn)
                for _, fn in OPS]
    return tf.switch_case(op, branches)

  return dispatch


def apply_op(image, op, value):
  """OPS[op](image, value) for a scalar int32 tensor ``op``."""
  tf = _tf()
  out = _op_function()(image, tf.cast(op, tf.int32),
                       tf.cast(value, tf.float32))
  return tf.ensure_shape(out, image.shape)


def apply_op_if(image, apply, op, value):
  """apply_op, or the identity op where ``apply`` is False."""
  tf = _tf()
  return apply_op(image, tf.where(apply, op, OP_INDEX['identity']), value)
