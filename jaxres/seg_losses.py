"""Per-pixel segmentation losses with an ignore label, in float32.

Every loss takes logits [B, H, W, C] and integer labels [B, H, W] in which
`ignore_label` (255) marks pixels that must not count, and returns a scalar.
Inside a jitted step over a Mesh the batch axis is global, so a "mean over
valid pixels" is over every valid pixel of the global batch.

The config picks and weights them:
  config.losses = 'ce'          (or 'ce+dice', 'focal', 'ce+focal+dice', ...)
  config.loss_weights.dice = 0.5   (a missing name weighs 1.0)
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

IGNORE_LABEL = 255
LOSSES = ('ce', 'dice', 'focal')


def _valid_and_safe(labels, num_classes: int, ignore_label: int):
  """Valid-pixel mask and labels clipped into range (for gathers)."""
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  return valid, jnp.where(valid, labels, 0)


def _pixel_weights(safe_labels, valid, class_weights):
  weights = valid.astype(jnp.float32)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights, jnp.float32)[safe_labels]
  return weights


def _per_pixel_nll(logits, safe_labels):
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]


def cross_entropy(logits, labels, *, ignore_label: int = IGNORE_LABEL,
                  class_weights: Optional[Sequence[float]] = None):
  """Softmax cross-entropy averaged over the valid pixels.

  With class weights w this is PyTorch's `CrossEntropyLoss(weight=w,
  ignore_index=255)`: sum_i w[y_i] * nll_i / sum_i w[y_i]. A batch with no valid
  pixel gives 0, not NaN.
  """
  valid, safe = _valid_and_safe(labels, logits.shape[-1], ignore_label)
  weights = _pixel_weights(safe, valid, class_weights)
  nll = _per_pixel_nll(logits, safe)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def focal(logits, labels, *, gamma: float = 2.0, alpha: Optional[float] = None,
          ignore_label: int = IGNORE_LABEL,
          class_weights: Optional[Sequence[float]] = None):
  """Focal loss (Lin et al. 2017): -alpha * (1 - p_t)^gamma * log p_t.

  Averaged like `cross_entropy` (weighted mean over valid pixels); gamma = 0 and
  alpha = None give exactly the cross-entropy. A scalar alpha scales the loss,
  as in the multi-class form of the bubbliiiing reference.
  """
  valid, safe = _valid_and_safe(labels, logits.shape[-1], ignore_label)
  weights = _pixel_weights(safe, valid, class_weights)
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


def parse_losses(spec: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in spec.split('+') if n.strip())
  unknown = [n for n in names if n not in LOSSES]
  if not names or unknown:
    raise ValueError(f'config.losses={spec!r}: use one or more of '
                     f'{", ".join(LOSSES)} joined by "+" (e.g. "ce+dice").')
  if len(set(names)) != len(names):
    raise ValueError(f'config.losses={spec!r} names a loss twice.')
  return names


def make_loss_fn(config, ignore_label: int = IGNORE_LABEL):
  """Returns loss_fn(logits, labels) -> (total, {name: value}) from the config.

  Reads config.losses, config.loss_weights (a dict-like of name -> weight),
  config.class_weights (None or one weight per class), config.focal_gamma,
  config.focal_alpha and config.dice_smooth.
  """
  names = parse_losses(config.losses)
  weights = dict(config.loss_weights)
  class_weights = config.class_weights
  class_weights = None if class_weights is None else tuple(class_weights)
  fns = {
      'ce': lambda lo, la: cross_entropy(
          lo, la, ignore_label=ignore_label, class_weights=class_weights),
      'focal': lambda lo, la: focal(
          lo, la, gamma=config.focal_gamma,
          alpha=config.focal_alpha, ignore_label=ignore_label,
          class_weights=class_weights),
      'dice': lambda lo, la: dice(
          lo, la, smooth=config.dice_smooth,
          ignore_label=ignore_label, class_weights=class_weights),
  }

  def loss_fn(logits, labels):
    if class_weights is not None and len(class_weights) != logits.shape[-1]:
      raise ValueError(f'config.class_weights has {len(class_weights)} entries '
                       f'but the model predicts {logits.shape[-1]} classes.')
    parts = {name: fns[name](logits, labels) for name in names}
    total = sum(float(weights.get(name, 1.0)) * value
                for name, value in parts.items())
    return total, parts

  return loss_fn
