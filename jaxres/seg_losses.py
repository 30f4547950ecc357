"""Per-pixel segmentation losses with an ignore label, in float32.

Every loss takes logits [B, H, W, C] and integer labels [B, H, W] in which
`ignore_label` (255) marks pixels that must not count, and returns a scalar.
Inside a jitted step over a Mesh the batch axis is global, so a "mean over
valid pixels" is over every valid pixel of the global batch.

The config picks and weights them:
  config.losses = 'ce'          (or 'ce+dice', 'focal', 'ce+focal+dice', ...)
  config.loss_weights.dice = 0.5   (a missing name weighs 1.0)

Training extras (config fields under "Training extras" in
configs/segmentation_common.py): online hard example mining for the per-pixel
losses (`ohem_mask`), class weights from label statistics
(`class_weights_from_counts`) and the auxiliary head's loss (`make_loss_fn`'s
`aux_logits`).
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_LABEL = 255
LOSSES = ('ce', 'dice', 'focal')


def _valid_and_safe(labels, num_classes: int, ignore_label: int):
  """Valid-pixel mask and labels clipped into range (for gathers)."""
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  return valid, jnp.where(valid, labels, 0)


def _pixel_weights(safe_labels, valid, class_weights, pixel_mask=None):
  weights = valid.astype(jnp.float32)
  if pixel_mask is not None:
    weights = weights * pixel_mask.astype(jnp.float32)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights, jnp.float32)[safe_labels]
  return weights


def _per_pixel_nll(logits, safe_labels):
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]


def cross_entropy(logits, labels, *, ignore_label: int = IGNORE_LABEL,
                  class_weights: Optional[Sequence[float]] = None,
                  pixel_mask=None):
  """Softmax cross-entropy averaged over the valid pixels.

  With class weights w this is PyTorch's `CrossEntropyLoss(weight=w,
  ignore_index=255)`: sum_i w[y_i] * nll_i / sum_i w[y_i]. A batch with no valid
  pixel gives 0, not NaN. `pixel_mask` (bool [B, H, W], e.g. `ohem_mask`)
  restricts the mean to the pixels it selects.
  """
  valid, safe = _valid_and_safe(labels, logits.shape[-1], ignore_label)
  weights = _pixel_weights(safe, valid, class_weights, pixel_mask)
  nll = _per_pixel_nll(logits, safe)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def focal(logits, labels, *, gamma: float = 2.0, alpha: Optional[float] = None,
          ignore_label: int = IGNORE_LABEL,
          class_weights: Optional[Sequence[float]] = None, pixel_mask=None):
  """Focal loss (Lin et al. 2017): -alpha * (1 - p_t)^gamma * log p_t.

  Averaged like `cross_entropy` (weighted mean over valid pixels); gamma = 0 and
  alpha = None give exactly the cross-entropy. A scalar alpha scales the loss,
  as in the multi-class form of the bubbliiiing reference. `pixel_mask` as in
  `cross_entropy`.
  """
  valid, safe = _valid_and_safe(labels, logits.shape[-1], ignore_label)
  weights = _pixel_weights(safe, valid, class_weights, pixel_mask)
  nll = _per_pixel_nll(logits, safe)
  p_t = jnp.exp(-nll)
  # (1 - p_t) ** gamma with gamma = 0 must be 1 even where p_t == 1.
  modulator = jnp.power(jnp.maximum(1.0 - p_t, 0.0), gamma) if gamma else 1.0
  loss = modulator * nll
  if alpha is not None:
    loss = alpha * loss
  return jnp.sum(loss * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def dice(logits, labels, *, smooth: float = 1.0,
         ignore_label: int = IGNORE_LABEL,
         class_weights: Optional[Sequence[float]] = None):
  """Soft Dice loss: 1 - mean over classes of the soft Dice coefficient.

  For class c, with softmax probabilities p and one-hot targets t summed over
  the valid pixels of the batch: (2 sum p*t + smooth) / (sum p + sum t + smooth).
  Ignored pixels contribute to neither sum. `class_weights` turns the mean over
  classes into a weighted mean.
  """
  num_classes = logits.shape[-1]
  valid, safe = _valid_and_safe(labels, num_classes, ignore_label)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  mask = valid[..., None].astype(jnp.float32)
  probs = probs * mask
  targets = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32) * mask
  axes = tuple(range(logits.ndim - 1))
  intersection = jnp.sum(probs * targets, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes)
  score = (2.0 * intersection + smooth) / (total + smooth)
  if class_weights is None:
    return 1.0 - jnp.mean(score)
  w = jnp.asarray(class_weights, jnp.float32)
  return 1.0 - jnp.sum(w * score) / jnp.sum(w)


# ---------------------------------------------------------------------------
# Online hard example mining (mmseg's OHEMPixelSampler with a threshold).
# ---------------------------------------------------------------------------

def ohem_mask(logits, labels, *, thresh: float, min_kept: int,
              ignore_label: int = IGNORE_LABEL):
  """The hard pixels of a batch: bool [B, H, W], no gradient.

  A valid pixel is kept when its softmax probability of the true class is
  below max(thresh, p_(k)), where p_(k) is the k-th smallest such probability
  of the batch (0-based) and k = min(min_kept * B, valid pixels - 1): every
  pixel the model is unsure of, and at least the min_kept * B hardest ones
  (all valid pixels but the easiest one when the batch has fewer), as mmseg's
  OHEMPixelSampler does. `min_kept` is per image, as in mmseg (whose
  cityscapes configs use 100000); B is the global batch, so the threshold is
  one over every device's pixels, not one per device as in mmseg. Ignored
  pixels are never kept. Fixed shapes: the threshold comes from a top-k.
  """
  logits = jax.lax.stop_gradient(logits)
  valid, safe = _valid_and_safe(labels, logits.shape[-1], ignore_label)
  prob = jnp.exp(-_per_pixel_nll(logits, safe))
  flat = jnp.where(valid, prob, jnp.inf).reshape(-1)
  batch_kept = int(min_kept) * labels.shape[0]
  smallest = -jax.lax.top_k(-flat, min(batch_kept + 1, flat.size))[0]
  num_valid = jnp.sum(valid)
  index = jnp.clip(jnp.minimum(batch_kept, num_valid - 1), 0, None)
  min_threshold = jnp.where(num_valid > 0, smallest[index], 0.0)
  threshold = jnp.maximum(min_threshold, thresh)
  return valid & (prob < threshold)


# ---------------------------------------------------------------------------
# Class weights from label statistics.
# ---------------------------------------------------------------------------

CLASS_WEIGHTINGS = ('none', 'median_freq', 'inverse_log')
ENET_C = 1.02  # ENet's constant: weights are bounded by 1 / ln(1.02) = 50.5.


def class_weights_from_counts(method: str, class_pixels,
                              image_pixels=None) -> Optional[np.ndarray]:
  """Per-class loss weights (float64 [C]) from pixel counts; None for 'none'.

  class_pixels[c]: labelled pixels of class c. image_pixels[c]: labelled
  pixels of the masks in which class c appears ('median_freq' only).
    'median_freq' (Eigen & Fergus 2015): freq_c = class_pixels[c] /
      image_pixels[c], w_c = median(freq) / freq_c.
    'inverse_log' (ENet, Paszke et al. 2016): w_c = 1 / ln(1.02 + p_c) with
      p_c = class_pixels[c] / sum(class_pixels).
  A class absent from the counts gets the largest weight: that of the rarest
  class seen ('median_freq'), 1 / ln(1.02) ('inverse_log', p_c = 0).
  """
  if method not in CLASS_WEIGHTINGS:
    raise ValueError(f'class_weighting={method!r}; choose one of '
                     f'{", ".join(CLASS_WEIGHTINGS)}.')
  if method == 'none':
    return None
  counts = np.asarray(class_pixels, np.float64)
  seen = counts > 0
  if not seen.any():
    raise ValueError(f'class_weighting={method!r}: the scanned masks hold no '
                     'labelled pixel to count.')
  if method == 'inverse_log':
    return 1.0 / np.log(ENET_C + counts / counts.sum())
  freq = counts[seen] / np.asarray(image_pixels, np.float64)[seen]
  weights = np.full(counts.shape, np.max(np.median(freq) / freq))
  weights[seen] = np.median(freq) / freq
  return weights


# ---------------------------------------------------------------------------
# The configured loss.
# ---------------------------------------------------------------------------

def parse_losses(spec: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in spec.split('+') if n.strip())
  unknown = [n for n in names if n not in LOSSES]
  if not names or unknown:
    raise ValueError(f'config.losses={spec!r}: use one or more of '
                     f'{", ".join(LOSSES)} joined by "+" (e.g. "ce+dice").')
  if len(set(names)) != len(names):
    raise ValueError(f'config.losses={spec!r} names a loss twice.')
  return names


# Entries of make_loss_fn's parts that are statistics, not loss terms.
STATS = ('ohem_kept',)


def make_loss_fn(config, ignore_label: int = IGNORE_LABEL,
                 class_weights: Optional[Sequence[float]] = None):
  """Returns loss_fn(logits, labels, aux_logits=None) -> (total, parts).

  Reads config.losses, config.loss_weights (a dict-like of name -> weight),
  config.class_weights (None or one weight per class; `class_weights`, e.g.
  from `class_weights_from_counts`, replaces it), config.focal_gamma,
  config.focal_alpha, config.dice_smooth, and the training extras:
  config.ohem_thresh (None: off) with config.ohem_min_kept, which restrict the
  per-pixel losses (ce, focal) to `ohem_mask`'s hard pixels (parts['ohem_kept']
  is the fraction of valid pixels kept), and config.aux_loss_weight, the
  weight of the cross-entropy (class weights, no OHEM) of `aux_logits`, the
  auxiliary head's logits at label size (parts['aux']).
  """
  names = parse_losses(config.losses)
  weights = dict(config.loss_weights)
  if class_weights is None:
    class_weights = config.class_weights
  class_weights = None if class_weights is None else tuple(
      float(w) for w in class_weights)
  ohem_thresh = config.get('ohem_thresh')
  ohem_min_kept = config.get('ohem_min_kept') or 0
  aux_weight = float(config.get('aux_loss_weight') or 0.0)
  fns = {
      'ce': lambda lo, la, m: cross_entropy(
          lo, la, ignore_label=ignore_label, class_weights=class_weights,
          pixel_mask=m),
      'focal': lambda lo, la, m: focal(
          lo, la, gamma=config.focal_gamma,
          alpha=config.focal_alpha, ignore_label=ignore_label,
          class_weights=class_weights, pixel_mask=m),
      'dice': lambda lo, la, m: dice(
          lo, la, smooth=config.dice_smooth,
          ignore_label=ignore_label, class_weights=class_weights),
  }

  def loss_fn(logits, labels, aux_logits=None):
    if class_weights is not None and len(class_weights) != logits.shape[-1]:
      raise ValueError(f'config.class_weights has {len(class_weights)} entries '
                       f'but the model predicts {logits.shape[-1]} classes.')
    mask = None
    if ohem_thresh is not None:
      mask = ohem_mask(logits, labels, thresh=ohem_thresh,
                       min_kept=ohem_min_kept, ignore_label=ignore_label)
    parts = {name: fns[name](logits, labels, mask) for name in names}
    total = sum(float(weights.get(name, 1.0)) * value
                for name, value in parts.items())
    if aux_logits is not None and aux_weight:
      parts['aux'] = cross_entropy(aux_logits, labels,
                                   ignore_label=ignore_label,
                                   class_weights=class_weights)
      total = total + aux_weight * parts['aux']
    if mask is not None:
      valid, _ = _valid_and_safe(labels, logits.shape[-1], ignore_label)
      parts['ohem_kept'] = jnp.sum(mask) / jnp.maximum(jnp.sum(valid), 1)
    return total, parts

  return loss_fn
