"""Optimizers and learning-rate schedules built from the config.

Durations reach this module already converted to steps (see `jaxres.durations`).
"""
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('cosine', 'poly', 'constant', 'step')
OPTIMIZERS = ('sgd', 'adamw')


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


def make_optimizer(config, lr_fn):
  """Returns the optax transformation for `config.optimizer`."""
  name = config.optimizer
  if name == 'sgd':
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay, decay_mask),
        optax.sgd(lr_fn, momentum=config.momentum, nesterov=config.nesterov))
  elif name == 'adamw':
    tx = optax.adamw(lr_fn, b1=config.adam_b1,
                     b2=config.adam_b2,
                     weight_decay=config.weight_decay, mask=decay_mask)
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
