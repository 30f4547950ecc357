"""Image classification: softmax cross-entropy, top-1 / top-5 evaluation.

What the task adds to the loop in `jaxres.trainer`: its data, its step and its
evaluator. Steps are pure functions, jitted once by the loop.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import optax

from jaxres import optim
from jaxres.sharding import DataParallel


def train_step(state, batch, rng, *, num_classes: int, label_smoothing: float,
               lr_fn):
  """One SGD step on the global batch; BatchNorm statistics are global."""
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
        train=True, mutable=['batch_stats'], rngs={'dropout': step_rng})
    loss = optim.cross_entropy(logits, batch['label'], num_classes,
                               label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      'grad_norm': optax.tree.norm(grads),
      'learning_rate': lr_fn(state.step),
  }
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
    return {'num_classes': ds.num_classes,
            'class_names': list(ds.class_names),
            'image_shape': list(ds.image_shape)}

  def optimizer(self, lr_fn, params_shape, durations):
    del params_shape, durations
    return optim.make_optimizer(self.config, lr_fn)

  def train_phases(self, ds, lr_fn, durations):
    """[(end_step, step_fn)]: step_fn runs while step < end_step."""
    del durations
    step = functools.partial(
        train_step, num_classes=ds.num_classes,
        label_smoothing=self.config.label_smoothing, lr_fn=lr_fn)
    return [(None, step)]

  def eval_step(self, ds, dp: DataParallel):
    """(pure eval step, its out_shardings)."""
    return (functools.partial(eval_step, num_classes=ds.num_classes),
            dp.replicated)

  def evaluate(self, eval_fn, state, ds, dp: DataParallel, step: int, writer):
    metrics = evaluate(eval_fn, state, ds.eval_iter_fn(), dp)
    writer.write_scalars(step, metrics)
    logging.info('eval @ step %d: top-1 %.4f  top-5 %.4f  loss %.4f  (%d '
                 'examples)', step, metrics['eval_top1'], metrics['eval_top5'],
                 metrics['eval_loss'], metrics['eval_examples'])
    return metrics
