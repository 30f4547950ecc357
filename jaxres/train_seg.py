"""Semantic segmentation: train and evaluate on every device of a Mesh.

The second small trainer, beside `jaxres.train` (classification), whose mesh,
checkpointing, optimizers, duration handling and safety rails it reuses.
Sections: model and optimizer, steps, evaluation, images, loop.

Backbone freezing. For the first `freeze_backbone_epochs` (or _steps,
_examples) the params under 'backbone' get no update: their gradients are not
computed (stop_gradient) and the backbone's optimizer is masked. The optimizer
state has the same structure in both phases, so a run resumes in either.
`freeze_bn_train_mode` picks how the frozen backbone's BatchNorm behaves:
True keeps train mode (normalises with batch statistics and updates the running
averages, like `requires_grad=False` in PyTorch with `model.train()`); False
runs the backbone in inference mode (running averages, no updates).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

if TYPE_CHECKING:
  import ml_collections  # pylint: disable=g-import-not-at-top

from jaxres import checkpoint as ckpt_lib
from jaxres import optim
from jaxres import seg_losses
from jaxres import seg_metrics
from jaxres import steps as steps_lib
from jaxres import visualize
from jaxres.sharding import DataParallel
from jaxres.train import (Progress, TrainState, _SigtermFlag,  # pylint: disable=g-importing-member
                          build_model, create_train_state)

BACKBONE = 'backbone'
DATASET_INFO_FILE = 'segmentation.json'


# ---------------------------------------------------------------------------
# Model and optimizer.
# ---------------------------------------------------------------------------

def make_optimizer(config, lr_fn, params, freeze_steps: int):
  """The config's optimizer; the backbone group is masked for freeze_steps.

  Params under 'backbone' and the rest are two optax groups, each with the
  config's optimizer; the backbone's runs only from step `freeze_steps` on and
  sees the learning rate of the global step (its own count starts at 0 when it
  starts). Gradient clipping, if any, acts on the global norm of all groups.
  """
  if BACKBONE not in params:
    if freeze_steps:
      from jaxres.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
      raise ConfigError(
          f'config.freeze_backbone_*: the model {config.model!r} has no '
          f'{BACKBONE!r} params to freeze (top-level: {sorted(params)}).')
    return optim.make_optimizer(config, lr_fn)
  unclipped = config.copy_and_resolve_references()
  with unclipped.unlocked():
    unclipped.grad_clip_norm = None
  head_tx = optim.make_optimizer(unclipped, lr_fn)
  backbone_tx = optax.transforms.conditionally_mask(
      optim.make_optimizer(unclipped, lambda count: lr_fn(count + freeze_steps)),
      lambda step: step >= freeze_steps)
  labels = {k: BACKBONE if k == BACKBONE else 'head' for k in params}
  tx = optax.multi_transform({'head': head_tx, BACKBONE: backbone_tx}, labels)
  if config.get('grad_clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def _backbone_in_inference_mode(next_fun, args, kwargs, context):
  """Method interceptor: runs the 'backbone' submodule with train=False."""
  module = context.module
  if context.method_name == '__call__' and module.path == (BACKBONE,):
    if 'train' in kwargs:
      kwargs = {**kwargs, 'train': False}
    elif len(args) > 1:
      args = (args[0], False, *args[2:])
  return next_fun(*args, **kwargs)


def build_state(config, model, input_shape, freeze_steps: int, lr_fn, rng):
  """The TrainState (params, batch_stats, optimizer state) for `model`."""
  params_shape = jax.eval_shape(
      lambda r: model.init({'params': r, 'dropout': r},
                           jnp.zeros((1, *input_shape), jnp.float32),
                           train=False)['params'], rng)
  tx = make_optimizer(config, lr_fn, params_shape, freeze_steps)
  return create_train_state(model, tx, rng, input_shape)


# ---------------------------------------------------------------------------
# Steps: pure functions, jitted once with explicit shardings.
# ---------------------------------------------------------------------------

def train_step(state: TrainState, batch, rng, *, loss_fn, lr_fn,
               num_classes: int, ignore_label: int, frozen_backbone: bool,
               backbone_bn_train: bool):
  """One optimizer step on the global batch."""
  step_rng = jax.random.fold_in(rng, state.step)

  def compute_loss(params):
    if frozen_backbone:
      params = {**params, BACKBONE: jax.lax.stop_gradient(params[BACKBONE])}
    apply = functools.partial(
        state.apply_fn, {'params': params, 'batch_stats': state.batch_stats},
        batch['image'], train=True, mutable=['batch_stats'],
        rngs={'dropout': step_rng})
    if frozen_backbone and not backbone_bn_train:
      with nn.intercept_methods(_backbone_in_inference_mode):
        logits, updates = apply()
    else:
      logits, updates = apply()
    loss, parts = loss_fn(logits, batch['label'])
    return loss, (logits, parts, updates.get('batch_stats', state.batch_stats))

  (loss, (logits, parts, batch_stats)), grads = jax.value_and_grad(
      compute_loss, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  labels = batch['label']
  valid = (labels != ignore_label) & (labels < num_classes)
  correct = (jnp.argmax(logits, -1) == labels) & valid
  metrics = {
      'loss': loss,
      'pixel_accuracy': jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1),
      'grad_norm': optax.tree.norm(grads),
      'learning_rate': lr_fn(state.step),
      **{f'loss_{name}': value for name, value in parts.items()},
  }
  return new_state, metrics


def resize_to_labels(logits, label_hw, label_shape):
  """Bilinear (half-pixel) resize of each example's logits to its label size.

  logits [B, h, w, C] -> [B, *label_shape, C], where example i is scaled to
  label_hw[i] in the top-left corner (the rest is padding, labelled 255).
  """
  scale = label_hw.astype(jnp.float32) / jnp.asarray(logits.shape[1:3],
                                                      jnp.float32)

  def one(x, s):
    return jax.image.scale_and_translate(
        x, (*label_shape, x.shape[-1]), (0, 1), s, jnp.zeros((2,), jnp.float32),
        method='linear', antialias=False)

  return jax.vmap(one)(logits.astype(jnp.float32), scale)


def eval_step(state: TrainState, batch, *, num_classes: int, ignore_label: int,
              resize_logits: bool):
  """Confusion matrix and loss sums of one padded batch, scored at label size."""
  logits = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      batch['image'], train=False)
  labels = batch['label']
  if resize_logits:
    logits = resize_to_labels(logits, batch['label_hw'], labels.shape[1:3])
  elif logits.shape[1:3] != labels.shape[1:3]:
    raise ValueError(f'Logits {logits.shape} do not match labels {labels.shape}.')
  example_mask = batch['mask'] > 0
  labels = jnp.where(example_mask[:, None, None], labels, ignore_label)
  predictions = jnp.argmax(logits, axis=-1)
  valid = (labels != ignore_label) & (labels < num_classes)
  num_valid = jnp.sum(valid)
  loss = seg_losses.cross_entropy(logits, labels, ignore_label=ignore_label)
  sums = {
      'confusion': seg_metrics.confusion_matrix(
          labels, predictions, num_classes, ignore_label=ignore_label),
      'loss': loss * num_valid,
      'pixels': num_valid,
      'count': jnp.sum(batch['mask']),
  }
  return sums, predictions.astype(jnp.uint8)


# ---------------------------------------------------------------------------
# Evaluation and images.
# ---------------------------------------------------------------------------

def _local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    key = s.index[0].start or 0
    if key not in seen:  # Skip replicas of the same rows.
      seen.add(key)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def evaluate(eval_fn, state, batches, dp: DataParallel, num_classes: int,
             *, num_images: int = 0, resized_inputs: bool = False):
  """Exact confusion matrix over the eval set; returns (scores, samples).

  `samples` are up to `num_images` (image uint8, prediction, label) triples
  from this process's part of the first batch, at each example's label size,
  for TensorBoard. `resized_inputs`: eval images were resized to a fixed size
  (else they sit at full resolution in the top-left of a padded slot).
  """
  accumulator = seg_metrics.ConfusionAccumulator(num_classes)
  totals = None
  samples = []
  for batch in batches:
    sums, predictions = eval_fn(state, dp.shard_batch(batch))
    accumulator.add(sums.pop('confusion'),
                    batch['label'].size * jax.process_count())
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if num_images and not samples:
      samples = _samples(batch, _local_rows(predictions), num_images,
                         resized_inputs)
  if totals is None:
    raise ValueError('The evaluation split is empty.')
  result = seg_metrics.scores(accumulator.result())
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  result['loss'] = totals['loss'] / max(totals['pixels'], 1.0)
  result['examples'] = totals['count']
  return result, samples


def _samples(batch, predictions, num_images: int, resized_inputs: bool):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxres.data import MEAN_RGB, STDDEV_RGB  # pylint: disable=g-import-not-at-top
  samples = []
  for i in range(len(predictions)):
    if len(samples) == num_images:
      break
    if batch['mask'][i] <= 0:
      continue
    h, w = (int(v) for v in batch['label_hw'][i])
    rgb = visualize.to_uint8_image(batch['image'][i], MEAN_RGB, STDDEV_RGB)
    if resized_inputs:
      rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    else:
      rgb = rgb[:h, :w]
    samples.append((rgb, predictions[i, :h, :w], batch['label'][i, :h, :w]))
  return samples


def eval_panel(image, prediction, label, ignore_label: int = 255) -> np.ndarray:
  """[input | predicted overlay | true overlay] as one uint8 image."""
  return visualize.side_by_side(
      image, visualize.overlay(image, prediction, ignore_label=ignore_label),
      visualize.overlay(image, label, ignore_label=ignore_label))


def _scalars(result: dict, class_names) -> dict:
  scalars = {'eval_miou': result['miou'],
             'eval_pixel_accuracy': result['pixel_accuracy'],
             'eval_mean_class_accuracy': result['mean_class_accuracy'],
             'eval_loss': result['loss'],
             'eval_examples': result['examples']}
  for name, iou in zip(class_names, result['iou']):
    if not np.isnan(iou):
      scalars[f'eval_iou/{name}'] = float(iou)
  return scalars


# ---------------------------------------------------------------------------
# Train and evaluate.
# ---------------------------------------------------------------------------

def _hw(size):
  return (int(size), int(size)) if np.ndim(size) == 0 else tuple(
      int(v) for v in size)


def write_dataset_info(workdir: str, num_classes: int, class_names,
                       ignore_label: int):
  """Records what predict.py needs without opening the dataset."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, DATASET_INFO_FILE), 'w') as f:
    json.dump({'num_classes': num_classes, 'class_names': list(class_names),
               'ignore_label': ignore_label}, f, indent=2)


def check_segmentation_config(config, num_classes=None):
  """Raises ConfigError for bad segmentation fields (losses, class weights)."""
  from jaxres.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
  problems = []
  try:
    seg_losses.parse_losses(config.get('losses', 'ce'))
  except ValueError as e:
    problems.append(str(e))
  for name, weight in dict(config.get('loss_weights') or {}).items():
    if name not in seg_losses.LOSSES or weight < 0:
      problems.append(f'loss_weights.{name}={weight}: names must be in '
                      f'{seg_losses.LOSSES} and weights >= 0.')
  class_weights = config.get('class_weights')
  if class_weights is not None:
    if num_classes is not None and len(class_weights) != num_classes:
      problems.append(f'class_weights has {len(class_weights)} entries for '
                      f'{num_classes} classes.')
    if any(w < 0 for w in class_weights):
      problems.append(f'class_weights={class_weights} must be >= 0.')
  if config.get('eval_size') is not None and any(
      s <= 0 for s in _hw(config.eval_size)):
    problems.append(f'eval_size={config.eval_size} must be positive.')
  if problems:
    raise ConfigError('Invalid segmentation config:\n  ' +
                      '\n  '.join(problems))


def train_and_evaluate(config: 'ml_collections.ConfigDict', workdir: str,
                       eval_only: bool = False, checkpoint_step=None):
  """Trains (or only evaluates) the configured segmentation model.

  Returns the last evaluation's metrics: eval_miou, eval_pixel_accuracy,
  eval_mean_class_accuracy, eval_loss, eval_examples, eval_iou/<class>.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  from jaxres.config_checks import check_config  # pylint: disable=g-import-not-at-top
  from jaxres.data import segmentation as seg_data  # pylint: disable=g-import-not-at-top
  check_config(config)
  check_segmentation_config(config)

  # --- Mesh: one `data` axis over every device of every process. ---
  dp = DataParallel.create(config.batch_size, config.eval_batch_size)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)

  # --- Input (built for step 0 to learn the sizes; rebuilt on resume). ---
  def make_data(start_step):
    return seg_data.get_segmentation_datasets(
        config, seed=config.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())

  ds = make_data(0)
  num_classes, ignore_label = ds.num_classes, ds.ignore_label
  check_segmentation_config(config, num_classes)
  class_names = tuple(ds.class_names)
  steps_per_epoch = max(ds.num_train_examples // config.batch_size, 1)
  durations = functools.partial(steps_lib.steps_from, config,
                                batch_size=config.batch_size,
                                steps_per_epoch=steps_per_epoch)
  total_steps = durations('num_train')
  warmup_steps = durations('warmup', default=0)
  log_every = durations('log_every', default=100)
  eval_every = durations('eval_every', default=steps_per_epoch)
  ckpt_every = durations('checkpoint_every', default=steps_per_epoch)
  freeze_steps = durations('freeze_backbone', default=0)

  # --- Model, optimizer and sharded state. ---
  model = build_model(config, num_classes)
  base_lr = config.learning_rate * config.batch_size / config.get(
      'lr_base_batch_size', 16)
  lr_fn = optim.learning_rate_fn(config, base_lr, total_steps, warmup_steps,
                                 steps_per_epoch)
  crop_shape = (*_hw(config.get('crop_size', 512)), 3)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = jax.jit(
      functools.partial(build_state, config, model, crop_shape, freeze_steps,
                        lr_fn),
      out_shardings=dp.replicated)(init_rng)
  if config.get('init_from'):
    from jaxres import convert  # pylint: disable=g-import-not-at-top
    loaded = convert.load_pretrained(
        config.init_from,
        {'params': state.params, 'batch_stats': state.batch_stats},
        config.model, backbone_only=config.get('init_backbone_only', False))
    if isinstance(loaded, dict):  # {'params', 'batch_stats'} (convert.py).
      params, batch_stats = loaded['params'], loaded.get('batch_stats', {})
    else:
      params, batch_stats = loaded
    state = state.replace(
        params=jax.device_put(params, dp.replicated),
        batch_stats=jax.device_put(batch_stats or state.batch_stats,
                                   dp.replicated))
  parameter_overview.log_parameter_overview(
      state.params, msg=f'{config.model}: parameters')
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  # --- Checkpoint: resume from the workdir if it holds one. ---
  meta = ckpt_lib.experiment_meta(config)
  manager = ckpt_lib.make_manager(f'{workdir}/checkpoints',
                                  max_to_keep=config.max_checkpoints_to_keep,
                                  read_only=eval_only)
  restored, restored_step = ckpt_lib.restore_latest(
      manager, ckpt_lib.abstract_like(state), meta, step=checkpoint_step)
  if restored is not None:
    state = restored
    logging.info('Restored checkpoint step %d from %s.', restored_step, workdir)
  elif eval_only:
    raise ckpt_lib.CheckpointError(
        f'No checkpoint in {workdir}/checkpoints: nothing to evaluate. Point '
        '--workdir at a training run (evaluation never uses random weights).')
  if not eval_only:
    write_dataset_info(workdir, num_classes, class_names, ignore_label)

  # --- Jitted, sharded steps (state donated: updated in place). ---
  loss_fn = seg_losses.make_loss_fn(config, ignore_label)

  def jit_train_step(frozen_backbone):
    return jax.jit(
        functools.partial(
            train_step, loss_fn=loss_fn, lr_fn=lr_fn, num_classes=num_classes,
            ignore_label=ignore_label, frozen_backbone=frozen_backbone,
            backbone_bn_train=config.get('freeze_bn_train_mode', True)),
        in_shardings=(dp.replicated, dp.batch, dp.replicated),
        out_shardings=(dp.replicated, dp.replicated), donate_argnums=(0,))

  p_train_step = jit_train_step(False)
  p_frozen_train_step = jit_train_step(True) if freeze_steps else None
  resized_inputs = config.get('eval_size') is not None
  p_eval_step = jax.jit(
      functools.partial(eval_step, num_classes=num_classes,
                        ignore_label=ignore_label, resize_logits=resized_inputs),
      in_shardings=(dp.replicated, dp.batch),
      out_shardings=(dp.replicated, dp.batch))

  def run_eval(step):
    result, samples = evaluate(
        p_eval_step, state, ds.eval_iter_fn(), dp, num_classes,
        num_images=config.get('num_eval_images', 3),
        resized_inputs=resized_inputs)
    scalars = _scalars(result, class_names)
    writer.write_scalars(step, scalars)
    if samples:
      writer.write_images(step, {
          f'eval_image_{i}': eval_panel(*sample, ignore_label)[None]
          for i, sample in enumerate(samples)})
    logging.info('eval @ step %d: mIoU %.4f  pixel acc %.4f  mean class acc '
                 '%.4f  loss %.4f  (%d examples)\n%s', step, result['miou'],
                 result['pixel_accuracy'], result['mean_class_accuracy'],
                 result['loss'], result['examples'],
                 seg_metrics.class_table(result, class_names))
    return scalars

  if eval_only:
    metrics = run_eval(int(state.step))
    writer.flush()
    return metrics

  start_step = int(state.step)
  if start_step:
    ds = make_data(start_step)
  logging.info('Training %s (%s parameters) for %d steps (%d per epoch) on %d '
               'devices, global batch %d, from step %d; backbone frozen for '
               'the first %d steps.', config.model, f'{num_params:,}',
               total_steps, steps_per_epoch, jax.device_count(),
               config.batch_size, start_step, freeze_steps)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})

  # --- Loop. ---
  progress = Progress(writer, start_step=start_step, total_steps=total_steps,
                      batch_size=config.batch_size, last_saved=restored_step,
                      accuracy_key='pixel_accuracy')
  eval_metrics = {}
  train_iter = dp.prefetch(ds.train_iter)
  step = start_step
  with _SigtermFlag() as sigterm:
    while step < total_steps:
      batch = next(train_iter)
      step_fn = p_frozen_train_step if step < freeze_steps else p_train_step
      state, metrics = step_fn(state, batch, step_rng)
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
