"""Mixup, CutMix and the soft-target losses they need, inside the jitted step.

Semantics follow timm's `Mixup` in its default 'batch' mode: one draw per
batch decides whether to mix (probability `mixup_prob`) and, when both alphas
are set, whether that batch uses CutMix (probability `mixup_switch_prob`) or
Mixup. The batch is mixed with itself reversed (example i with B-1-i). CutMix
pastes one box of the reversed batch, of area about (1 - lambda) H W, centred
uniformly in the image and clipped at its border; lambda is then corrected to
1 - (clipped box area) / (H W), so the label weights are exactly the pixel
fractions. Targets are the label-smoothed one-hots (off = s / C, on = 1 - s +
s / C) mixed with the same weight.

Every draw comes from the rng the step passes in (fold_in(seed rng, step)), so
a resumed run mixes exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

LOSSES = ('ce', 'bce')


@dataclasses.dataclass(frozen=True)
class MixConfig:
  mixup_alpha: float = 0.
  cutmix_alpha: float = 0.
  prob: float = 1.
  switch_prob: float = 0.5

  @property
  def enabled(self) -> bool:
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

  @classmethod
  def from_config(cls, config) -> 'MixConfig':
    return cls(config.get('mixup_alpha', 0.) or 0.,
               config.get('cutmix_alpha', 0.) or 0.,
               config.get('mixup_prob', 1.), config.get('mixup_switch_prob', 0.5))


def smooth_one_hot(labels, num_classes: int, smoothing: float = 0.):
  """timm's targets: off = smoothing / C, on = 1 - smoothing + off."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return optax.smooth_labels(one_hot, smoothing) if smoothing else one_hot


def draw(rng, cfg: MixConfig, height: int, width: int) -> dict:
  """This batch's mixing: {'lam', 'cutmix', 'box': (y0, y1, x0, x1)}.

  lam is the weight of the batch itself (1: not mixed); for CutMix it is
  already corrected to the clipped box's area.
  """
  k_apply, k_switch, k_beta, k_y, k_x = jax.random.split(rng, 5)
  apply = jax.random.uniform(k_apply) < cfg.prob
  if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
    cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
  else:
    cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
  # One Beta draw with the chosen alpha (a gamma sampler compiles slowly).
  alpha = jnp.where(cutmix, cfg.cutmix_alpha, cfg.mixup_alpha)
  lam = jax.random.beta(k_beta, alpha, alpha)
  # The box: side sqrt(1 - lam) of each image side, truncated like timm's int().
  ratio = jnp.sqrt(1. - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  y0, y1 = (jnp.clip(cy - cut_h // 2, 0, height),
            jnp.clip(cy + cut_h // 2, 0, height))
  x0, x1 = (jnp.clip(cx - cut_w // 2, 0, width),
            jnp.clip(cx + cut_w // 2, 0, width))
  lam_box = 1. - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  lam = jnp.where(cutmix, lam_box, lam)
  lam = jnp.where(apply, lam, 1.).astype(jnp.float32)
  return {'lam': lam, 'cutmix': apply & cutmix, 'box': (y0, y1, x0, x1)}


def box_mask(box, height: int, width: int):
  """[H, W, 1] bool: True inside the CutMix box."""
  y0, y1, x0, x1 = box
  ys = jnp.arange(height)[:, None, None]
  xs = jnp.arange(width)[None, :, None]
  return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def mix_batch(rng, images, labels, num_classes: int, smoothing: float,
              cfg: MixConfig):
  """(mixed images, soft targets [B, C] float32, lam) for one batch."""
  targets = smooth_one_hot(labels, num_classes, smoothing)
  if not cfg.enabled:
    return images, targets, jnp.float32(1.)
  height, width = images.shape[1:3]
  d = draw(rng, cfg, height, width)
  lam = d['lam']
  flipped = images[::-1]
  pasted = jnp.where(box_mask(d['box'], height, width), flipped, images)
  blended = (lam * images.astype(jnp.float32) +
             (1. - lam) * flipped.astype(jnp.float32)).astype(images.dtype)
  mixed = jnp.where(d['cutmix'], pasted, blended)
  return mixed, lam * targets + (1. - lam) * targets[::-1], lam


def loss(logits, targets, kind: str = 'ce', bce_target_thresh=None):
  """Per-example loss against soft targets [B, C], in float32.

  'ce': softmax cross-entropy with soft targets (timm SoftTargetCrossEntropy).
  'bce': sigmoid binary cross-entropy per class, averaged over the classes as
  timm's BinaryCrossEntropy (reduction 'mean'); with bce_target_thresh the
  targets become 1 where they exceed it, else 0 (ResNet strikes back: 0.2).
  """
  logits = logits.astype(jnp.float32)
  if kind == 'ce':
    return optax.softmax_cross_entropy(logits, targets)
  if kind == 'bce':
    if bce_target_thresh is not None:
      targets = (targets > bce_target_thresh).astype(jnp.float32)
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)
  raise ValueError(f'Unknown loss {kind!r}; choose one of {", ".join(LOSSES)}.')
