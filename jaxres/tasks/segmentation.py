"""Semantic segmentation: per-pixel losses, backbone freezing, mIoU evaluation.

What the task adds to the loop in `jaxres.trainer`: its data, its optimizer
groups, its steps and its evaluator (`jaxres.tasks.seg_eval`).

Backbone freezing. For the first `freeze_backbone_epochs` (or _steps,
_examples) the params under 'backbone' get no update: their gradients are not
computed (stop_gradient) and the backbone's optimizer is masked. The optimizer
state has the same structure in both phases, so a run resumes in either.
`freeze_bn_train_mode` picks how the frozen backbone's BatchNorm behaves:
True keeps train mode (normalises with batch statistics and updates the running
averages, like `requires_grad=False` in PyTorch with `model.train()`); False
runs the backbone in inference mode (running averages, no updates).

Training extras (configs/segmentation_common.py): OHEM and class weights act
in the loss (`jaxres.seg_losses`); class weights from label statistics
(config.class_weighting) are computed once from the training masks the
start-up scan counts, logged and saved in the run's dataset.json. With
config.aux_loss_weight > 0 the model trains with an auxiliary FCN head
(`jaxres.models.aux_head`) whose variables live under 'aux_head'; evaluation
runs the model without them.
"""
from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxres import checkpoint as ckpt_lib
from jaxres import optim
from jaxres import seg_inference
from jaxres import seg_losses
from jaxres import train_state
from jaxres.config_checks import ConfigError
from jaxres.models import aux_head
from jaxres.sharding import DataParallel
from jaxres.tasks import seg_eval

BACKBONE = 'backbone'


# ---------------------------------------------------------------------------
# Optimizer groups: the backbone's is masked while it is frozen.
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
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def build_state(config, model, input_shape, freeze_steps: int, lr_fn, rng):
  """The TrainState (params, batch_stats, optimizer state) for `model`."""
  tx = make_optimizer(config, lr_fn,
                      train_state.params_shape(model, input_shape),
                      freeze_steps)
  return train_state.create_train_state(model, tx, rng, input_shape)


def _backbone_in_inference_mode(next_fun, args, kwargs, context):
  """Method interceptor: runs the 'backbone' submodule with train=False."""
  module = context.module
  if context.method_name == '__call__' and module.path == (BACKBONE,):
    if 'train' in kwargs:
      kwargs = {**kwargs, 'train': False}
    elif len(args) > 1:
      args = (args[0], False, *args[2:])
  return next_fun(*args, **kwargs)


# ---------------------------------------------------------------------------
# The train step: a pure function, jitted once per phase by the loop.
# ---------------------------------------------------------------------------

def train_step(state, batch, rng, *, loss_fn, lr_fn, num_classes: int,
               ignore_label: int, frozen_backbone: bool,
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
        outputs, updates = apply()
    else:
      outputs, updates = apply()
    # A model with an auxiliary head (aux_head.WithAuxHead) gives two.
    logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs,
                                                                     None)
    loss, parts = loss_fn(logits, batch['label'], aux_logits)
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
      **{name if name in seg_losses.STATS else f'loss_{name}': value
         for name, value in parts.items()},
  }
  return new_state, metrics


# ---------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------

def _without_training_only(eval_step, state, batch):
  """Evaluates the model alone: no auxiliary head variables."""
  return eval_step(state.replace(
      params=ckpt_lib.without_training_only(state.params),
      batch_stats=ckpt_lib.without_training_only(state.batch_stats)), batch)


def computed_class_weights(config, ds):
  """config.class_weighting's weights from the scanned training masks (or
  None), logged with the counts they come from."""
  method = config.get('class_weighting', 'none')
  if method == 'none':
    return None
  stats = getattr(ds, 'train_label_stats', None)
  if stats is None:
    raise ConfigError(f'class_weighting={method!r} needs the pixel counts of '
                      'the training masks, which this dataset does not give; '
                      'set config.class_weights instead.')
  try:
    weights = seg_losses.class_weights_from_counts(
        method, stats.class_pixels, stats.image_pixels)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  total = max(int(stats.class_pixels.sum()), 1)
  lines = [f'  {name:<16} {w:9.4f}  ({100 * c / total:6.2f}% of pixels)'
           for name, w, c in zip(ds.class_names, weights, stats.class_pixels)]
  logging.info('Class weights (%s) from %d of %d training masks (set '
               'config.label_check_files to count more):\n%s', method,
               stats.num_masks, stats.num_files, '\n'.join(lines))
  missing = [n for n, c in zip(ds.class_names, stats.class_pixels) if not c]
  if missing:
    logging.warning('Classes absent from the counted masks get the largest '
                    'weight: %s.', ', '.join(missing))
  return tuple(float(w) for w in weights)


def hw(size):
  """An int or (h, w) config value as an (h, w) tuple."""
  return (int(size), int(size)) if np.ndim(size) == 0 else tuple(
      int(v) for v in size)


def check_config(config, num_classes=None):
  """Raises ConfigError for bad segmentation fields (losses, class weights)."""
  problems = []
  try:
    seg_losses.parse_losses(config.losses)
  except ValueError as e:
    problems.append(str(e))
  for name, weight in dict(config.loss_weights).items():
    if name not in seg_losses.LOSSES or weight < 0:
      problems.append(f'loss_weights.{name}={weight}: names must be in '
                      f'{seg_losses.LOSSES} and weights >= 0.')
  class_weights = config.class_weights
  if class_weights is not None:
    if num_classes is not None and len(class_weights) != num_classes:
      problems.append(f'class_weights has {len(class_weights)} entries for '
                      f'{num_classes} classes.')
    if any(w < 0 for w in class_weights):
      problems.append(f'class_weights={class_weights} must be >= 0.')
  if config.eval_size is not None and any(s <= 0 for s in hw(config.eval_size)):
    problems.append(f'eval_size={config.eval_size} must be positive.')
  problems += _training_extras_problems(config)
  if problems:
    raise ConfigError('Invalid segmentation config:\n  ' +
                      '\n  '.join(problems))


def _training_extras_problems(config) -> list[str]:
  """What is wrong with the OHEM, class weighting and auxiliary head fields."""
  problems = []
  thresh = config.get('ohem_thresh')
  if thresh is not None and not 0 < thresh <= 1:
    problems.append(f'ohem_thresh={thresh} must be in (0, 1] (a probability '
                    'of the true class; mmseg uses 0.7), or None for no OHEM.')
  min_kept = config.get('ohem_min_kept')
  if thresh is not None and (min_kept is None or min_kept < 1):
    problems.append(f'ohem_min_kept={min_kept} must be >= 1 (pixels kept per '
                    'image at least; mmseg uses 100000) when ohem_thresh is '
                    'set.')
  weighting = config.get('class_weighting', 'none')
  if weighting not in seg_losses.CLASS_WEIGHTINGS:
    problems.append(f'class_weighting={weighting!r}: choose one of '
                    f'{", ".join(seg_losses.CLASS_WEIGHTINGS)}.')
  elif weighting != 'none' and config.class_weights is not None:
    problems.append(f'class_weighting={weighting!r} computes the class weights;'
                    f' class_weights={config.class_weights} sets them: set '
                    'only one (the other to none / None).')
  aux = config.get('aux_loss_weight') or 0
  if aux < 0:
    problems.append(f'aux_loss_weight={aux} must be >= 0 (0: no auxiliary '
                    'head).')
  return problems


class Segmentation:
  """The segmentation task; see `jaxres.tasks` for the interface."""

  name = 'segmentation'
  accuracy_key = 'pixel_accuracy'

  def __init__(self, config):
    self.config = config
    self.class_weights = None  # Computed from label counts, if configured.

  def check_config(self, num_classes=None):
    check_config(self.config, num_classes)

  def load_data(self, process_index: int, process_count: int):
    from jaxres.data import segmentation  # pylint: disable=g-import-not-at-top
    ds = segmentation.get_segmentation_datasets(
        self.config, seed=self.config.seed, process_index=process_index,
        process_count=process_count)
    self.check_config(ds.num_classes)
    self.class_weights = computed_class_weights(self.config, ds)
    return ds

  def input_shape(self, ds):
    del ds
    return (*hw(self.config.crop_size), 3)

  def training_model(self, model):
    """The module trained: `model`, with an auxiliary head if configured."""
    if not self.config.get('aux_loss_weight'):
      return model
    return aux_head.with_aux_head(model, model.num_classes)

  def dataset_info(self, ds) -> dict:
    info = {'num_classes': ds.num_classes, 'class_names': list(ds.class_names),
            'image_shape': list(self.input_shape(ds)),
            'ignore_label': ds.ignore_label}
    if self.class_weights is not None:
      stats = ds.train_label_stats
      info['class_weights'] = {
          'method': self.config.class_weighting,
          'weights': [float(w) for w in self.class_weights],
          'label_pixels': [int(c) for c in stats.class_pixels],
          'masks_counted': stats.num_masks}
    return info

  def optimizer(self, lr_fn, params_shape, durations):
    return make_optimizer(self.config, lr_fn, params_shape,
                          durations('freeze_backbone', default=0))

  def train_phases(self, ds, lr_fn, durations):
    """[(end_step, step_fn)]: step_fn runs while step < end_step."""
    freeze_steps = durations('freeze_backbone', default=0)
    step = functools.partial(
        train_step, loss_fn=seg_losses.make_loss_fn(
            self.config, ds.ignore_label, class_weights=self.class_weights),
        lr_fn=lr_fn, num_classes=ds.num_classes, ignore_label=ds.ignore_label,
        backbone_bn_train=self.config.freeze_bn_train_mode)
    phases = [(None, functools.partial(step, frozen_backbone=False))]
    if freeze_steps:
      phases.insert(0, (freeze_steps, functools.partial(
          step, frozen_backbone=True)))
    return phases

  def eval_step(self, ds, dp: DataParallel):
    """(pure eval step, its out_shardings): sums replicated, masks sharded."""
    mode = seg_inference.from_config(self.config)
    logging.info('Evaluation inference: %s.', mode.describe())
    step = functools.partial(
        seg_eval.eval_step, num_classes=ds.num_classes,
        ignore_label=ds.ignore_label,
        resize_logits=self.config.eval_size is not None, inference=mode)
    return functools.partial(_without_training_only, step), (dp.replicated,
                                                             dp.batch)

  def evaluate(self, eval_fn, state, ds, dp: DataParallel, step: int, writer):
    return seg_eval.evaluate_and_log(
        eval_fn, state, ds, dp, step, writer,
        num_images=self.config.num_eval_images,
        resized_inputs=self.config.eval_size is not None)
