r"""Segmentation inference modes, shared by evaluation and `jaxres.predict`.

  mode = seg_inference.from_config(config)      # or InferenceMode(...)
  logits = seg_inference.logits(forward, images, mode)   # inside jax.jit

`forward(images [N, h, w, 3]) -> logits [N, h, w, C]` is the network in
inference mode. The modes compose:

- whole (the default): one forward pass over the whole (padded) image.
  With one scale 1.0 and no flip this is exactly `forward(images)`, so the
  results are bit-identical to evaluation before inference modes existed.
- slide: windows of `crop` every `stride` pixels; the last window of each axis
  is moved back to end at the image edge, and a window never starts before
  0 (mmseg's `slide_inference`). An axis shorter than the crop gets one
  window of the whole axis, unpadded (mmseg runs the small patch unpadded
  too). Overlapping logits are summed and each pixel divided by the number
  of windows that cover it (logits, not probabilities, as mmseg).
- scales and flip: the input is resized (bilinear, half-pixel, no
  antialiasing) by each scale, also mirrored left-right if `flip`, run in
  the mode above, and the logits are resized back to the input size (and
  mirrored back; the mirror image runs in the same call as the image, as a
  batch of 2B). The softmax probabilities of all variants are averaged, as
  mmseg's test-time augmentation does; the result is returned as their log,
  so argmax and cross-entropy read it like logits.

Memory: slide runs at most `batch` windows of each image per step (steps
evened out: 18 windows at 8 per step are 3 steps of 6) in a `lax.fori_loop`, accumulating into one logits-sum buffer of the image's size.
One jitted function, so evaluation keeps its single sharded eval step (the
batch axis stays split over the mesh; windows are cut along height and
width), and XLA reuses the loop body's buffers: only one step's windows and
their activations are live at a time, whatever the image size.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

MODES = ('whole', 'slide')
DEFAULT_SLIDE_BATCH = 8


def hw(size) -> tuple[int, int]:
  """An int or (h, w) value as an (h, w) tuple of ints."""
  if np.ndim(size) == 0:
    return (int(size), int(size))
  values = tuple(int(v) for v in size)
  if len(values) != 2:
    raise ValueError(f'{size} is neither an int nor (h, w).')
  return values


@dataclasses.dataclass(frozen=True)
class InferenceMode:
  """How the logits of an image are computed (see the module docstring)."""
  mode: str = 'whole'
  crop: Optional[tuple[int, int]] = None  # slide: window (h, w).
  stride: Optional[tuple[int, int]] = None  # slide: step (h, w).
  batch: int = DEFAULT_SLIDE_BATCH  # slide: most windows per image per step.
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False

  @property
  def averages_probabilities(self) -> bool:
    return tuple(self.scales) != (1.0,) or self.flip

  def describe(self) -> str:
    text = self.mode
    if self.mode == 'slide':
      text += (f' (crop {self.crop[0]}x{self.crop[1]}, stride '
               f'{self.stride[0]}x{self.stride[1]}, {self.batch} windows/step)')
    if self.averages_probabilities:
      text += f', scales {tuple(self.scales)}'
      text += ' + flip' if self.flip else ''
    return text


WHOLE = InferenceMode()  # Evaluation as it was before inference modes.


# ---------------------------------------------------------------------------
# From the config (and the predict command line), with checks.
# ---------------------------------------------------------------------------

def _field(config, name, default=None):
  value = config.get(name) if hasattr(config, 'get') else None
  return default if value is None else value


def config_problems(config) -> list[str]:
  """What is wrong with the config's inference fields, as messages."""
  problems = []
  mode = _field(config, 'inference', 'whole')
  if mode not in MODES:
    problems.append(f'inference={mode!r} is not one of {", ".join(MODES)}.')
  sizes = {}
  for name in ('slide_crop', 'slide_stride'):
    value = _field(config, name)
    if value is None:
      continue
    try:
      sizes[name] = hw(value)
    except (TypeError, ValueError):
      problems.append(f'{name}={value!r} must be an int or (h, w).')
      continue
    if min(sizes[name]) <= 0:
      problems.append(f'{name}={value} must be positive.')
  crop_name = 'slide_crop'
  if 'slide_crop' not in sizes and _field(config, 'slide_crop') is None:
    crop_name = 'crop_size'  # The default window.
    try:
      sizes[crop_name] = hw(_field(config, 'crop_size', 512))
    except (TypeError, ValueError):
      pass
  if crop_name in sizes and 'slide_stride' in sizes and any(
      s > c for s, c in zip(sizes['slide_stride'], sizes[crop_name])):
    problems.append(
        f'slide_stride={_field(config, "slide_stride")} must be <= '
        f'{crop_name}={_field(config, crop_name)} in each axis (a larger '
        'stride leaves pixels that no window covers).')
  batch = _field(config, 'slide_batch', DEFAULT_SLIDE_BATCH)
  if not isinstance(batch, (int, np.integer)) or batch < 1:
    problems.append(f'slide_batch={batch!r} must be an int >= 1 (windows '
                    'per image per step).')
  scales = _field(config, 'inference_scales', (1.0,))
  try:
    scales = tuple(float(s) for s in scales)
  except (TypeError, ValueError):
    scales = ()
  if not scales or min(scales) <= 0:
    problems.append(f'inference_scales={_field(config, "inference_scales")!r}'
                    ' must be a non-empty list of positive numbers, e.g. '
                    '(0.5, 0.75, 1.0, 1.25, 1.5, 1.75).')
  return problems


def from_config(config) -> InferenceMode:
  """The config's inference mode; slide crop defaults to config.crop_size and
  the stride to 2/3 of the crop (mmseg's 512/341)."""
  problems = config_problems(config)
  if problems:
    raise ValueError('Invalid inference config:\n  ' + '\n  '.join(problems))
  mode = _field(config, 'inference', 'whole')
  crop = stride = None
  if mode == 'slide':
    crop = hw(_field(config, 'slide_crop', _field(config, 'crop_size', 512)))
    stride = _field(config, 'slide_stride')
    stride = hw(stride) if stride is not None else tuple(
        max(1, c * 2 // 3) for c in crop)
  return InferenceMode(
      mode=mode, crop=crop, stride=stride,
      batch=int(_field(config, 'slide_batch', DEFAULT_SLIDE_BATCH)),
      scales=tuple(float(s) for s in _field(config, 'inference_scales',
                                            (1.0,))),
      flip=bool(_field(config, 'inference_flip', False)))


# ---------------------------------------------------------------------------
# Sliding windows.
# ---------------------------------------------------------------------------

def window_starts(length: int, crop: int, stride: int) -> list[int]:
  """Start of each window along one axis; the last one ends at the edge."""
  crop = min(crop, length)
  count = max(length - crop + stride - 1, 0) // stride + 1
  return [min(i * stride, length - crop) for i in range(count)]


def slide(forward: Callable, images, crop, stride,
          windows_per_step: int = DEFAULT_SLIDE_BATCH):
  """Window-averaged float32 logits [B, H, W, C] of images [B, H, W, c]."""
  b, height, width, channels = images.shape
  ch, cw = min(crop[0], height), min(crop[1], width)
  offsets = [(y, x) for y in window_starts(height, ch, stride[0])
             for x in window_starts(width, cw, stride[1])]
  count = np.zeros((height, width), np.float32)
  for y, x in offsets:
    count[y:y + ch, x:x + cw] += 1
  # As few steps as windows_per_step allows, each as full as it can be: 18
  # windows at 8 per step run as 3 steps of 6, not 8 + 8 + 2 padding.
  steps = -(-len(offsets) // max(1, windows_per_step))
  k = -(-len(offsets) // steps)
  extra = steps * k - len(offsets)  # Repeats of the last window, weight 0.
  starts = jnp.asarray(np.asarray(offsets + offsets[-1:] * extra,
                                  np.int32).reshape(steps, k, 2))
  weights = jnp.asarray(np.asarray([1.0] * len(offsets) + [0.0] * extra,
                                   np.float32).reshape(steps, k))
  window_shape = jax.ShapeDtypeStruct((b * k, ch, cw, channels), images.dtype)
  num_classes = jax.eval_shape(forward, window_shape).shape[-1]

  def body(i, total):
    windows = jnp.stack([
        jax.lax.dynamic_slice(images, (0, starts[i, j, 0], starts[i, j, 1], 0),
                              (b, ch, cw, channels)) for j in range(k)], axis=1)
    out = forward(windows.reshape(b * k, ch, cw, channels))
    out = out.astype(jnp.float32).reshape(b, k, ch, cw, num_classes)
    for j in range(k):  # In order: windows of one step may overlap.
      at = (0, starts[i, j, 0], starts[i, j, 1], 0)
      seen = jax.lax.dynamic_slice(total, at, (b, ch, cw, num_classes))
      total = jax.lax.dynamic_update_slice(total, seen + weights[i, j] *
                                           out[:, j], at)
    return total

  total = jax.lax.fori_loop(
      0, steps, body, jnp.zeros((b, height, width, num_classes), jnp.float32))
  return total / jnp.asarray(count)[None, :, :, None]


# ---------------------------------------------------------------------------
# Every mode.
# ---------------------------------------------------------------------------

def _resize(x, size):
  """Half-pixel bilinear resize of [B, h, w, C] to size (no antialiasing)."""
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), 'linear',
                          antialias=False)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
  return (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))


def logits(forward: Callable, images, mode: InferenceMode = WHOLE):
  """Logits [B, H, W, C] of images [B, H, W, c] in `mode` (inside jit).

  whole, one scale 1.0, no flip: `forward(images)` itself, unchanged.
  slide: float32 window-averaged logits. Several scales or flip: the log of
  the averaged softmax probabilities (float32).
  """
  if mode.mode == 'slide':
    run = lambda x: slide(forward, x, mode.crop, mode.stride, mode.batch)
  elif mode.mode == 'whole':
    run = forward
  else:
    raise ValueError(f'Unknown inference mode {mode.mode!r}; one of {MODES}.')
  if not mode.averages_probabilities:
    return run(images)
  b, height, width = images.shape[:3]
  probabilities, n = 0.0, 0
  for scale in mode.scales:
    size = scaled_size(height, width, scale)
    x = images if size == (height, width) else _resize(images, size)
    if mode.flip:  # The mirror image rides in the same call: one trace.
      both = jnp.stack([x, x[:, :, ::-1]], axis=1)
      out = run(both.reshape(2 * b, *x.shape[1:])).astype(jnp.float32)
      out = out.reshape(b, 2, *out.shape[1:])
      outs = (out[:, 0], out[:, 1, :, ::-1])
    else:
      outs = (run(x).astype(jnp.float32),)
    for out in outs:
      if size != (height, width):
        out = _resize(out, (height, width))
      probabilities = probabilities + jax.nn.softmax(out, axis=-1)
      n += 1
  return jnp.log(jnp.maximum(probabilities / n, jnp.finfo(jnp.float32).tiny))
