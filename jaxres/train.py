"""Classification: train and evaluate on every device of a Mesh.

One readable loop. Sections: config checks, mesh, input, model and state,
sharded steps, checkpoint, evaluation, loop.
"""
from __future__ import annotations

import functools
import logging
import signal
import time
from typing import Any, TYPE_CHECKING

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

if TYPE_CHECKING:
  import ml_collections  # pylint: disable=g-import-not-at-top

from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks
from jaxres import data as data_lib
from jaxres import models
from jaxres import optim
from jaxres import steps as steps_lib
from jaxres.sharding import DataParallel


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteError(FloatingPointError):
  """The loss or the gradient became NaN or inf."""


# ---------------------------------------------------------------------------
# Model and state.
# ---------------------------------------------------------------------------

def compute_dtype(config):
  names = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
           'float16': jnp.float16}
  if config.dtype not in names:
    raise ValueError(f'config.dtype={config.dtype!r}; choose one of '
                     f'{", ".join(names)}.')
  return names[config.dtype]


def build_model(config, num_classes: int):
  kwargs = dict(config.get('model_kwargs') or {})
  return models.build_model(config.model, num_classes=num_classes,
                            dtype=compute_dtype(config), **kwargs)


def init_variables(model, rng, input_shape):
  """Initialises params and batch_stats for one example of `input_shape`."""
  variables = model.init({'params': rng, 'dropout': rng},
                         jnp.zeros((1, *input_shape), jnp.float32), train=False)
  return variables['params'], variables.get('batch_stats', {})


def create_train_state(model, tx, rng, input_shape) -> TrainState:
  params, batch_stats = init_variables(model, rng, input_shape)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=batch_stats)


def init_from_pretrained(config, state, dp):
  """Replaces the fresh variables by config.init_from (a new run only)."""
  from jaxres import convert  # pylint: disable=g-import-not-at-top
  loaded = convert.load_pretrained(
      config.init_from,
      {'params': state.params, 'batch_stats': state.batch_stats},
      config.model, backbone_only=config.get('init_backbone_only', False),
      log=logging.info)
  loaded = jax.device_put(loaded, dp.replicated)
  return state.replace(params=loaded['params'],
                       batch_stats=loaded.get('batch_stats', state.batch_stats))


# ---------------------------------------------------------------------------
# Steps: pure functions, jitted once with explicit shardings.
# ---------------------------------------------------------------------------

def train_step(state: TrainState, batch, rng, *, num_classes: int,
               label_smoothing: float, lr_fn):
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


def eval_step(state: TrainState, batch, *, num_classes: int):
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


# ---------------------------------------------------------------------------
# Helpers for the loop.
# ---------------------------------------------------------------------------

class _SigtermFlag:
  """Remembers a SIGTERM (the preemption notice) until the step finishes."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: finishing the step, then saving.')
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(history, start_step: int, last_good_step):
  """Raises NonFiniteError naming the first step with a NaN/inf loss or grad."""
  for offset, m in enumerate(history):
    if not (np.isfinite(m['loss']) and np.isfinite(m['grad_norm'])):
      raise NonFiniteError(
          f'Non-finite loss ({m["loss"]}) or gradient norm ({m["grad_norm"]}) '
          f'at step {start_step + offset + 1}. Stopping; the latest '
          f'checkpoint (step {last_good_step}) is untouched. Lower the '
          'learning rate, add config.grad_clip_norm, or check the input data.')


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
  """Per-step metrics kept on device, checked and summarised at log steps.

  Fetching them only at log/checkpoint steps keeps the host from waiting on
  every step; a NaN/inf is still caught before the next checkpoint is written.
  """

  def __init__(self, writer, *, start_step: int, total_steps: int,
               batch_size: int, last_saved, accuracy_key: str = 'accuracy'):
    self.writer, self.total_steps, self.batch_size = writer, total_steps, batch_size
    self.accuracy_key = accuracy_key
    self.last_saved = last_saved
    self._history, self._history_start = [], start_step
    self._t_last, self._step_last = time.time(), start_step

  def add(self, metrics):
    self._history.append(metrics)

  def report(self, step: int) -> dict:
    """Checks the steps since the last report, writes and logs their means."""
    host = jax.device_get(self._history)
    _check_finite(host, self._history_start, self.last_saved)
    self._history, self._history_start = [], step
    now = time.time()
    steps_per_sec = (step - self._step_last) / max(now - self._t_last, 1e-9)
    self._t_last, self._step_last = now, step
    summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    summary.update(steps_per_sec=steps_per_sec,
                   images_per_sec=steps_per_sec * self.batch_size)
    self.writer.write_scalars(step, summary)
    logging.info(
        'step %d/%d (%.1f%%) | loss %.4f | %s %.3f | lr %.4g | %.2f steps/s | '
        '%.1f img/s | ETA %s', step, self.total_steps,
        100 * step / self.total_steps, summary['loss'], self.accuracy_key,
        summary[self.accuracy_key], summary['learning_rate'], steps_per_sec,
        summary['images_per_sec'],
        _format_eta((self.total_steps - step) / max(steps_per_sec, 1e-9)))
    return summary


# ---------------------------------------------------------------------------
# Train and evaluate.
# ---------------------------------------------------------------------------

def train_and_evaluate(config: 'ml_collections.ConfigDict', workdir: str,
                       eval_only: bool = False, checkpoint_step=None):
  """Trains (or only evaluates) the configured classifier; returns metrics."""
  # clu (and through it TensorFlow) is needed for logging only: importing it
  # here keeps the steps above importable on machines without it.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  config_checks.check_config(config)

  # --- Mesh: one `data` axis over every device of every process. ---
  dp = DataParallel.create(config.batch_size, config.eval_batch_size)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)

  # --- Input (built for step 0 to learn the shapes; rebuilt on resume). ---
  def make_data(start_step):
    return data_lib.get_classification_datasets(
        config, seed=config.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())

  ds = make_data(0)
  num_classes = ds.num_classes
  steps_per_epoch = max(ds.num_train_examples // config.batch_size, 1)
  total_steps = steps_lib.steps_from(config, 'num_train', batch_size=config.batch_size,
                                     steps_per_epoch=steps_per_epoch)
  warmup_steps = steps_lib.steps_from(config, 'warmup', batch_size=config.batch_size,
                                      steps_per_epoch=steps_per_epoch, default=0)
  log_every = steps_lib.steps_from(config, 'log_every', batch_size=config.batch_size,
                                   steps_per_epoch=steps_per_epoch, default=100)
  eval_every = steps_lib.steps_from(config, 'eval_every', batch_size=config.batch_size,
                                    steps_per_epoch=steps_per_epoch,
                                    default=steps_per_epoch)
  ckpt_every = steps_lib.steps_from(config, 'checkpoint_every', batch_size=config.batch_size,
                                    steps_per_epoch=steps_per_epoch,
                                    default=steps_per_epoch)

  # --- Model, optimizer and sharded state. ---
  model = build_model(config, num_classes)
  base_lr = config.learning_rate * config.batch_size / config.get('lr_base_batch_size', 256)
  lr_fn = optim.learning_rate_fn(config, base_lr, total_steps, warmup_steps,
                                 steps_per_epoch)
  tx = optim.make_optimizer(config, lr_fn)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = jax.jit(
      functools.partial(create_train_state, model, tx,
                        input_shape=ds.image_shape),
      out_shardings=dp.replicated)(init_rng)
  parameter_overview.log_parameter_overview(
      state.params, msg=f'{config.model}: parameters')
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  # --- Checkpoint: resume from the workdir if it holds one. ---
  meta = ckpt_lib.experiment_meta(config)
  manager = ckpt_lib.make_manager(f'{workdir}/checkpoints',
                                  max_to_keep=config.max_checkpoints_to_keep,
                                  read_only=eval_only)
  restored, restored_step = ckpt_lib.restore_latest(
      manager, ckpt_lib.abstract_like(state), meta, step=checkpoint_step,
      set_aside_unreadable=not eval_only)
  if restored is not None:
    state = restored
    logging.info('Restored checkpoint step %d from %s.', restored_step, workdir)
  elif config.get('init_from') and not eval_only:
    state = init_from_pretrained(config, state, dp)
  elif eval_only:
    raise ckpt_lib.CheckpointError(
        f'No checkpoint in {workdir}/checkpoints: nothing to evaluate. Point '
        '--workdir at a training run (evaluation never uses random weights).')

  # --- Jitted, sharded steps (state donated: updated in place). ---
  p_train_step = jax.jit(
      functools.partial(train_step, num_classes=num_classes,
                        label_smoothing=config.label_smoothing, lr_fn=lr_fn),
      in_shardings=(dp.replicated, dp.batch, dp.replicated),
      out_shardings=(dp.replicated, dp.replicated), donate_argnums=(0,))
  p_eval_step = jax.jit(
      functools.partial(eval_step, num_classes=num_classes),
      in_shardings=(dp.replicated, dp.batch), out_shardings=dp.replicated)

  def run_eval(step):
    metrics = evaluate(p_eval_step, state, ds.eval_iter_fn(), dp)
    writer.write_scalars(step, metrics)
    logging.info('eval @ step %d: top-1 %.4f  top-5 %.4f  loss %.4f  (%d examples)',
                 step, metrics['eval_top1'], metrics['eval_top5'],
                 metrics['eval_loss'], metrics['eval_examples'])
    return metrics

  if eval_only:
    metrics = run_eval(int(state.step))
    writer.flush()
    return metrics

  start_step = int(state.step)
  if start_step:
    ds = make_data(start_step)
  logging.info('Training %s (%s parameters) for %d steps (%d per epoch) on %d '
               'devices, global batch %d, from step %d.', config.model,
               f'{num_params:,}', total_steps, steps_per_epoch,
               jax.device_count(), config.batch_size, start_step)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})

  # --- Loop. ---
  progress = Progress(writer, start_step=start_step, total_steps=total_steps,
                      batch_size=config.batch_size, last_saved=restored_step)
  eval_metrics = {}
  train_iter = dp.prefetch(ds.train_iter)
  step = start_step
  with _SigtermFlag() as sigterm:
    while step < total_steps:
      batch = next(train_iter)
      state, metrics = p_train_step(state, batch, step_rng)
      step += 1
      progress.add(metrics)

      preempted = sigterm.received or (
          jax.process_count() > 1 and manager.reached_preemption(step))
      is_last = step == total_steps
      if step % log_every == 0 or step % ckpt_every == 0 or is_last or preempted:
        progress.report(step)

      if step % eval_every == 0 or is_last:
        eval_metrics = run_eval(step)
      if step % ckpt_every == 0 or is_last or preempted:
        ckpt_lib.save(manager, step, state, meta, force=True)
        progress.last_saved = step
      if preempted and not is_last:
        logging.warning('Preempted: saved step %d; the next start resumes '
                        'from it.', step)
        break

  manager.wait_until_finished()
  manager.close()
  writer.flush()
  return eval_metrics
