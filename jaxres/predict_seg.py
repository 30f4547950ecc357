"""Segmentation output of `jaxres.predict`: a mask and an overlay PNG per image.

The inference mode (whole, slide, multi-scale + flip) is evaluation's, from
the config or the command line (`with_inference_flags`); see
jaxres/seg_inference.py.
"""
import logging
from typing import Optional, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from jaxres import inference
from jaxres import seg_inference
from jaxres.predict_io import PredictError, read_rgb, relative_stem, save_png


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _hw(size):
  return (int(size), int(size)) if np.ndim(size) == 0 else tuple(
      int(v) for v in size)


def _segment_fns(model: inference.InferenceModel,
                 mode: seg_inference.InferenceMode = seg_inference.WHOLE):
  """(forward, to_mask): jitted apart, so the network compiles once per input
  shape, not once per output size. `mode`: whole, slide, scales, flip."""
  def forward(variables, image):
    apply = lambda x: model.model.apply(variables, x, train=False)
    return seg_inference.logits(apply, image, mode).astype(jnp.float32)

  def to_mask(logits, hw, *, out_shape):
    """Class map [*out_shape]; the image's own (h, w) part is top-left."""
    logits = logits[0]
    # Half-pixel bilinear resize of the logits to the image's own size.
    scale = hw.astype(jnp.float32) / jnp.asarray(logits.shape[:2], jnp.float32)
    logits = jax.image.scale_and_translate(
        logits, (*out_shape, logits.shape[-1]), (0, 1), scale,
        jnp.zeros((2,), jnp.float32), method='linear', antialias=False)
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8)

  return jax.jit(forward), jax.jit(to_mask, static_argnames='out_shape')


def segment(model: inference.InferenceModel, config,
            images: Sequence[epath.Path], inputs: str, output: epath.Path,
            alpha: float = 0.5) -> list[str]:
  """Writes a mask and an overlay PNG per image; returns their paths."""
  from jaxres import visualize  # pylint: disable=g-import-not-at-top
  from jaxres.data import seg_transforms  # pylint: disable=g-import-not-at-top
  eval_size = config.get('eval_size')
  eval_size = None if eval_size is None else _hw(eval_size)
  multiple = config.get('eval_pad_multiple', 32)
  mode = seg_inference.from_config(config)
  logging.info('Inference: %s.', mode.describe())
  forward, to_mask = _segment_fns(model, mode)
  written = []
  for path in images:
    rgb = read_rgb(path)
    h, w = rgb.shape[:2]
    # Padded sizes bound the number of compilations for mixed sizes.
    out_shape = (_round_up(h, multiple), _round_up(w, multiple))
    x = np.zeros((1, *(eval_size or out_shape), 3), np.float32)
    seg_transforms.eval_transform(rgb, np.zeros((h, w), np.uint8), eval_size, x[0],
                            np.zeros(out_shape, np.int32))
    # Resized input: scale the logits to (h, w). Full resolution: the image
    # already sits top-left in the padded input, so the scale is 1.
    hw = (h, w) if eval_size else out_shape
    mask = np.asarray(to_mask(forward(model.variables, x),
                              np.asarray(hw, np.int32),
                              out_shape=out_shape))[:h, :w]
    stem = relative_stem(path, inputs)
    mask_path = output / f'{stem}_mask.png'
    overlay_path = output / f'{stem}_overlay.png'
    save_png(mask_path, visualize.save_mask_png, mask)
    save_png(overlay_path, visualize.save_rgb_png,
              visualize.overlay(rgb, mask, alpha))
    written += [str(mask_path), str(overlay_path)]
    logging.info('%s -> %s, %s (classes present: %s)', path, mask_path,
                 overlay_path, [model.class_names[c] for c in np.unique(mask)])
  return written


def _size_flag(text: Optional[str]):
  """'512' -> 512, '512,1024' -> (512, 1024)."""
  try:
    values = tuple(int(v) for v in text.replace('x', ',').split(','))
  except ValueError as e:
    raise PredictError(f'{text!r} is not a size: give H or H,W.') from e
  return values[0] if len(values) == 1 else values


def with_inference_flags(config, *, inference_mode: Optional[str] = None,
                         slide_crop: Optional[str] = None,
                         slide_stride: Optional[str] = None,
                         slide_batch: Optional[int] = None,
                         inference_scales: Optional[Sequence[str]] = None,
                         inference_flip: Optional[bool] = None):
  """config with the inference fields given on the command line replaced."""
  try:
    scales = inference_scales and tuple(float(s) for s in inference_scales)
  except ValueError as e:
    raise PredictError(f'--inference_scales={",".join(inference_scales)}: '
                       'give numbers, e.g. 0.75,1,1.25.') from e
  values = {'inference': inference_mode,
            'slide_crop': slide_crop and _size_flag(slide_crop),
            'slide_stride': slide_stride and _size_flag(slide_stride),
            'slide_batch': slide_batch,
            'inference_scales': scales,
            'inference_flip': inference_flip}
  values = {k: v for k, v in values.items() if v is not None}
  if not values:
    return config
  if 'inference' not in config:
    raise PredictError(
        f'--{", --".join(values)}: inference modes are for segmentation; '
        f'this config is for {config.get("task")}.')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for name, value in values.items():
      config[name] = value
  return config
