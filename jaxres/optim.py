"""Optimizers and learning-rate schedules built from the config.

Durations reach this module already converted to steps (see `jaxres.durations`).
"""
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('cosine', 'poly', 'constant', 'step')
OPTIMIZERS = ('sgd', 'adamw', 'lamb', 'lars')
LAMB_EPS = 1e-6  # timm's Lamb and optax.lamb default.


def learning_rate_fn(config, base_lr: float, total_steps: int,
                     warmup_steps: int, steps_per_epoch: int):
  """Linear warmup from 0, then the config's decay schedule."""
  decay_steps = max(total_steps - warmup_steps, 1)
  name = config.schedule
  if name == 'cosine':
    decay = optax.cosine_decay_schedule(base_lr, decay_steps)
  elif name == 'poly':
    decay = optax.polynomial_schedule(
        base_lr, 0.0, power=config.poly_power,
        transition_steps=decay_steps)
  elif name == 'constant':
    decay = optax.constant_schedule(base_lr)
  elif name == 'step':
    # Multiply by 0.1 at the given epochs (the original ResNet recipe).
    boundaries = {int(e * steps_per_epoch) - warmup_steps: 0.1
                  for e in config.lr_decay_epochs}
    decay = optax.piecewise_constant_schedule(base_lr, boundaries)
  else:
    raise ValueError(f'Unknown config.schedule={name!r}; choose one of '
                     f'{", ".join(SCHEDULES)}.')
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params):
  """Weight decay on kernels only, not on BatchNorm scales or biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def decay_everything(params):
  return jax.tree.map(lambda _: True, params)


def lamb(lr_fn, b1: float, b2: float, weight_decay: float, mask):
  """optax.lamb, except that the trust ratio, like the weight decay, skips
  the leaves `mask` excludes: timm's Lamb adapts only parameters with weight
  decay, so biases and norm parameters take plain Adam steps. With a mask
  that selects every leaf this is exactly optax.lamb."""
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=LAMB_EPS),
      optax.add_decayed_weights(weight_decay, mask),
      optax.masked(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(lr_fn))


def make_optimizer(config, lr_fn):
  """Returns the optax transformation for `config.optimizer`."""
  name = config.optimizer
  mask = (decay_mask if config.get('wd_exclude_bias_norm', True)
          else decay_everything)
  if name == 'sgd':
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask),
        optax.sgd(lr_fn, momentum=config.momentum, nesterov=config.nesterov))
  elif name == 'adamw':
    tx = optax.adamw(lr_fn, b1=config.adam_b1,
                     b2=config.adam_b2,
                     weight_decay=config.weight_decay, mask=mask)
  elif name == 'lamb':
    tx = lamb(lr_fn, config.adam_b1, config.adam_b2, config.weight_decay, mask)
  elif name == 'lars':
    # Biases and norm parameters (with wd_exclude_bias_norm) get neither
    # weight decay nor the layer-wise trust ratio (MLPerf, SimCLR practice).
    tx = optax.lars(lr_fn, weight_decay=config.weight_decay,
                    weight_decay_mask=mask, trust_ratio_mask=mask,
                    trust_coefficient=config.get('lars_trust_coefficient',
                                                 0.001),
                    momentum=config.momentum, nesterov=config.nesterov)
  else:
    raise ValueError(f'Unknown config.optimizer={name!r}; choose one of '
                     f'{", ".join(OPTIMIZERS)}.')
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.):
  """Per-example softmax cross-entropy, computed in float32."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    one_hot = optax.smooth_labels(one_hot, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), one_hot)
