"""Image classification: cross-entropy or BCE, top-1 / top-5 evaluation.

What the task adds to the loop in `jaxres.trainer`: its data, its step and its
evaluator. Steps are pure functions, jitted once by the loop. The train step
also holds the modern-recipe parts that act on a batch: Mixup/CutMix
(`jaxres.mixup`), gradient accumulation over micro-batches and the EMA update;
evaluation reports the EMA weights beside the trained ones.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxres import mixup
from jaxres import optim
from jaxres import train_state
from jaxres.sharding import DataParallel

MIX_STREAM = 0x6d6978  # fold_in constant: the mixing draws' own rng stream.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the train step needs from the config (hashable, static)."""
  num_classes: int
  label_smoothing: float = 0.
  loss: str = 'ce'
  bce_target_thresh: Optional[float] = None
  mix: mixup.MixConfig = mixup.MixConfig()
  grad_accum_steps: int = 1
  ema_decay: float = 0.  # 0: no EMA.
  ema_every_steps: int = 1
  ema_warmup_steps: int = 0

  @classmethod
  def from_config(cls, config, num_classes: int, ema_warmup_steps: int = 0):
    return cls(num_classes=num_classes,
               label_smoothing=config.label_smoothing,
               loss=config.get('loss', 'ce'),
               bce_target_thresh=config.get('bce_target_thresh'),
               mix=mixup.MixConfig.from_config(config),
               grad_accum_steps=config.get('grad_accum_steps', 1),
               ema_decay=config.get('ema_decay', 0.) or 0.,
               ema_every_steps=config.get('ema_every_steps', 1),
               ema_warmup_steps=ema_warmup_steps)


def micro_batches(batch, k: int):
  """[B, ...] -> [k, B / k, ...], micro-batch j = rows j, j + k, j + 2k, ...

  Strided, not contiguous: with the batch split over devices in contiguous
  blocks, every micro-batch then has B / (k D) rows on each device, and which
  rows form a micro-batch does not depend on the device count.
  """
  def split(x):
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state, batch, rng, *, cfg: StepConfig, lr_fn):
  """One optimizer step on the global batch; BatchNorm statistics are global.

  With cfg.grad_accum_steps = K the batch is K micro-batches of B / K, run one
  after the other in a lax.scan: their gradients are averaged into one
  optimizer step (the same as one step on B, for a model without BatchNorm),
  while BatchNorm normalises each micro-batch with its own statistics and
  updates its running averages K times. Mixup/CutMix draw per micro-batch.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  k = cfg.grad_accum_steps

  def micro_step(carry, xs):
    batch_stats, grad_sum = carry
    micro, index = xs
    # K = 1 keeps the dropout stream of runs made before accumulation existed.
    micro_rng = step_rng if k == 1 else jax.random.fold_in(step_rng, index)
    images, targets, _ = mixup.mix_batch(
        jax.random.fold_in(micro_rng, MIX_STREAM), micro['image'],
        micro['label'], cfg.num_classes, cfg.label_smoothing, cfg.mix)

    def loss_fn(params):
      logits, updates = state.apply_fn(
          {'params': params, 'batch_stats': batch_stats}, images,
          train=True, mutable=['batch_stats'], rngs={'dropout': micro_rng})
      loss = mixup.loss(logits, targets, cfg.loss,
                        cfg.bce_target_thresh).mean()
      return loss, (logits, updates.get('batch_stats', batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == micro['label'])
    if grad_sum is not None:
      grads = jax.tree.map(jnp.add, grad_sum, grads)
    return (batch_stats, grads), (loss, accuracy)

  if k == 1:
    # No loop: XLA:CPU runs convolutions inside a while loop many times
    # slower (measured 17x on the quickstart), and K = 1 keeps the program of
    # runs made before accumulation existed.
    (batch_stats, grads), (losses, accuracies) = micro_step(
        (state.batch_stats, None), (batch, 0))
  else:
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (batch_stats, grad_sum), (losses, accuracies) = jax.lax.scan(
        micro_step, (state.batch_stats, zeros),
        (micro_batches(batch, k), jnp.arange(k)))
    grads = jax.tree.map(lambda g: g / k, grad_sum)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {
      'loss': jnp.mean(losses),
      'accuracy': jnp.mean(accuracies),
      'grad_norm': optax.tree.norm(grads),
      'learning_rate': lr_fn(state.step),
  }
  if cfg.ema_decay:
    decay = train_state.ema_decay_at(new_state.step, cfg.ema_decay,
                                     cfg.ema_every_steps, cfg.ema_warmup_steps)
    new_state = train_state.update_ema(new_state, decay)
  return new_state, metrics


def eval_step(state, batch, *, num_classes: int):
  """Sums over the real (mask == 1) examples of one padded batch."""
  logits = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      batch['image'], train=False)
  mask = batch['mask']
  labels = batch['label']
  loss = optim.cross_entropy(logits, labels, num_classes)
  top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
  return {
      'loss': jnp.sum(loss * mask),
      'top1': jnp.sum((top5[:, 0] == labels) * mask),
      'top5': jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
      'count': jnp.sum(mask),
  }


def evaluate(eval_fn, state, batches, dp: DataParallel) -> dict:
  totals = None
  for batch in batches:
    sums = eval_fn(state, dp.shard_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('The evaluation split is empty.')
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {'eval_loss': float(totals['loss']) / count,
          'eval_top1': float(totals['top1']) / count,
          'eval_top5': float(totals['top5']) / count,
          'eval_examples': count}


class Classification:
  """The classification task; see `jaxres.tasks` for the interface."""

  name = 'classification'
  accuracy_key = 'accuracy'

  def __init__(self, config):
    self.config = config

  def check_config(self, num_classes=None):
    del num_classes  # Checked against the dataset by the input pipeline.

  def load_data(self, process_index: int, process_count: int):
    from jaxres import data  # pylint: disable=g-import-not-at-top
    return data.get_classification_datasets(
        self.config, seed=self.config.seed, process_index=process_index,
        process_count=process_count)

  def input_shape(self, ds):
    return tuple(ds.image_shape)

  def training_model(self, model):
    return model

  def dataset_info(self, ds) -> dict:
    # image_shape is the eval input (image_size), the size predict and export
    # default to, also when training crops are train_image_size.
    return {'num_classes': ds.num_classes,
            'class_names': list(ds.class_names),
            'image_shape': list(ds.image_shape)}

  def optimizer(self, lr_fn, params_shape, durations):
    del params_shape, durations
    return optim.make_optimizer(self.config, lr_fn)

  def train_phases(self, ds, lr_fn, durations):
    """[(end_step, step_fn)]: step_fn runs while step < end_step."""
    cfg = StepConfig.from_config(
        self.config, ds.num_classes,
        ema_warmup_steps=durations('ema_warmup', default=0))
    return [(None, functools.partial(train_step, cfg=cfg, lr_fn=lr_fn))]

  def eval_step(self, ds, dp: DataParallel):
    """(pure eval step, its out_shardings)."""
    return (functools.partial(eval_step, num_classes=ds.num_classes),
            dp.replicated)

  def evaluate(self, eval_fn, state, ds, dp: DataParallel, step: int, writer):
    """Top-1/top-5 of the model and, when the state has them, of its EMA
    weights (eval_ema_top1, ...: both logged and written to TensorBoard)."""
    metrics = evaluate(eval_fn, state, ds.eval_iter_fn(), dp)
    line = (f'top-1 {metrics["eval_top1"]:.4f}  top-5 {metrics["eval_top5"]:.4f}'
            f'  loss {metrics["eval_loss"]:.4f}')
    if state.has_ema:
      ema = evaluate(eval_fn, state.ema_weights(), ds.eval_iter_fn(), dp)
      metrics.update({k.replace('eval_', 'eval_ema_'): v
                      for k, v in ema.items() if k != 'eval_examples'})
      line += (f'  | EMA top-1 {ema["eval_top1"]:.4f}  top-5 '
               f'{ema["eval_top5"]:.4f}  loss {ema["eval_loss"]:.4f}')
    writer.write_scalars(step, metrics)
    logging.info('eval @ step %d: %s  (%d examples)', step, line,
                 metrics['eval_examples'])
    return metrics
