r"""Restores a trained model for inference: one place for predict and export.

  model = inference.load_for_inference(config, workdir='runs/r50')
  logits = model.apply(images)  # float32 [N, H, W, 3], normalised as in eval

Only the model's variables (`params`, `batch_stats`) are read from the
checkpoint (an Orbax partial restore), so inference needs neither the
optimizer nor the trainer: the model is built as training builds it
(`jaxres.train_state.build_model`: the registry in `jaxres.models`, the
config's dtype and model_kwargs). What the model predicts (task, class names,
ignore label, training input shape) comes from the run's `dataset.json`,
written by the trainer; older runs fall back to `segmentation.json`, to the
names of the embedded `shapes` datasets, then to `config.num_classes` with
names `class_0`, `class_1`, ...

A missing checkpoint, or one written for another task, model or class count,
raises `jaxres.checkpoint.CheckpointError`: inference never runs on random
weights. Paths go through etils.epath, so a gs:// workdir works.
"""
import dataclasses
import json
import logging
from typing import Any, Optional

from etils import epath
import jax

from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks
from jaxres import train_state

DATASET_INFO_FILE = 'dataset.json'
LEGACY_SEGMENTATION_INFO_FILE = 'segmentation.json'
CHECKPOINTS_DIR = 'checkpoints'
# Config fields that must agree between the checkpoint and the config for the
# weights to mean the same thing (the optimizer need not).
MODEL_FIELDS = ('task', 'model', 'num_classes', 'model_kwargs')
_NO_RANDOM_WEIGHTS = ('Point --workdir at a training run (inference never uses '
                      'random weights).')


@dataclasses.dataclass(frozen=True)
class InferenceModel:
  """A restored model and what its outputs mean."""
  model: Any  # The flax module.
  variables: dict  # {'params': ..., 'batch_stats': ...}
  task: str  # 'classification' or 'segmentation'
  num_classes: int
  class_names: tuple
  step: int  # The checkpoint's training step.
  ignore_label: Optional[int] = None  # Segmentation only.
  image_shape: Optional[tuple] = None  # Recorded (h, w, 3) input, if known.
  checkpoint_dir: str = ''

  def apply(self, images):
    """Logits for a batch of normalised float32 images, in inference mode."""
    return self.model.apply(self.variables, images, train=False)


# ---------------------------------------------------------------------------
# Where the checkpoint is, and what the run trained on.
# ---------------------------------------------------------------------------

def checkpoint_location(workdir: Optional[str] = None,
                        checkpoint: Optional[str] = None,
                        step: Optional[int] = None):
  """(checkpoints directory, step or None for the latest, run directory).

  `workdir` is a training run (its latest checkpoint, or `step`);
  `checkpoint` is one step directory, RUN/checkpoints/STEP.
  """
  if bool(workdir) == bool(checkpoint):
    raise ckpt_lib.CheckpointError(
        'Give exactly one of --workdir (a training run: its latest checkpoint) '
        'and --checkpoint (one step, RUN/checkpoints/STEP).')
  if checkpoint and step is not None:
    raise ckpt_lib.CheckpointError(
        f'--step={step} goes with --workdir; --checkpoint names its step.')
  if workdir:
    run_dir = epath.Path(workdir)
    return run_dir / CHECKPOINTS_DIR, step, run_dir
  path = epath.Path(str(checkpoint).rstrip('/'))
  if not path.name.isdigit():
    raise ckpt_lib.CheckpointError(
        f'--checkpoint={checkpoint} must name a step directory such as '
        'RUN/checkpoints/1000 (or use --workdir=RUN for the latest step).')
  directory = path.parent
  run_dir = directory.parent if directory.name == CHECKPOINTS_DIR else directory
  return directory, int(path.name), run_dir


def _default_class_names(config, num_classes: Optional[int]):
  """Names the embedded datasets know without generating any image."""
  from jaxres.data import shapes  # pylint: disable=g-import-not-at-top
  dataset = config.get('dataset')
  if dataset == 'shapes' and config.task == 'classification':
    return list(shapes.CLASS_NAMES)
  if dataset == 'shapes_seg' and num_classes:
    return list(shapes.class_names(num_classes))
  return None


def dataset_info(config, run_dir) -> dict:
  """{'task', 'num_classes', 'class_names', 'ignore_label', 'image_shape'}."""
  run_dir = epath.Path(run_dir)
  info = {}
  if (run_dir / DATASET_INFO_FILE).exists():
    info = json.loads((run_dir / DATASET_INFO_FILE).read_text())
  elif (run_dir / LEGACY_SEGMENTATION_INFO_FILE).exists():
    info = json.loads((run_dir / LEGACY_SEGMENTATION_INFO_FILE).read_text())
    info['task'] = 'segmentation'
  task = info.get('task') or config.task
  if task != config.task:
    raise ckpt_lib.CheckpointError(
        f'The run in {run_dir} trained a {task} model, but config.task='
        f'{config.task!r}. Use the config the run was trained with.')
  configured = config.get('num_classes')
  saved = info.get('num_classes')
  if saved is not None and configured and saved != configured:
    raise ckpt_lib.CheckpointError(
        f'The run in {run_dir} was trained with {saved} classes, but '
        f'config.num_classes={configured}. Use the config the run was '
        'trained with.')
  names = info.get('class_names') or _default_class_names(
      config, saved or configured)
  num_classes = saved or configured or (len(names) if names else None)
  if not num_classes:
    raise config_checks.ConfigError(
        f'Cannot tell the number of classes: {run_dir / DATASET_INFO_FILE} is '
        'missing and config.num_classes is not set. Pass '
        '--config.num_classes=N (N as in training).')
  if not names or len(names) != num_classes:
    names = [f'class_{i}' for i in range(num_classes)]
  ignore = info.get('ignore_label', 255 if task == 'segmentation' else None)
  return {'task': task, 'num_classes': int(num_classes),
          'class_names': tuple(str(n) for n in names), 'ignore_label': ignore,
          'image_shape': tuple(info['image_shape']) if info.get(
              'image_shape') else None}


# ---------------------------------------------------------------------------
# Model and variables.
# ---------------------------------------------------------------------------

def _input_shape(config, info) -> tuple:
  if info['image_shape']:
    return info['image_shape']
  size = config.get('crop_size') if info['task'] == 'segmentation' else None
  size = size or config.get('image_size') or 224
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  return (int(h), int(w), 3)


def abstract_variables(model, input_shape) -> dict:
  """{'params', 'batch_stats'} as ShapeDtypeStructs (nothing computed)."""
  def init(rng):
    params, batch_stats = train_state.init_variables(model, rng, input_shape)
    return {'params': params, 'batch_stats': batch_stats}
  try:
    return jax.eval_shape(init, jax.random.key(0))
  except ValueError as e:
    raise config_checks.ConfigError(
        f'The model does not build: {e} Fix config.model_kwargs.') from e


def load_for_inference(config, *, workdir: Optional[str] = None,
                       checkpoint: Optional[str] = None,
                       step: Optional[int] = None,
                       ema: bool = False) -> InferenceModel:
  """Restores the model of a training run for inference.

  Args:
    config: the config the run was trained with.
    workdir: the run's directory: its latest checkpoint, or `step`.
    checkpoint: instead of workdir, one step directory RUN/checkpoints/STEP.
    step: with workdir, the checkpoint step to restore (default latest).
    ema: restore the EMA weights (a run trained with config.ema_decay > 0).

  Raises:
    CheckpointError: no checkpoint, or one of another task or model.
    ConfigError: the config cannot build a model.
  """
  directory, step, run_dir = checkpoint_location(workdir, checkpoint, step)
  if not directory.is_dir():
    raise ckpt_lib.CheckpointError(
        f'No checkpoint directory {directory}. {_NO_RANDOM_WEIGHTS}')
  info = dataset_info(config, run_dir)
  model = train_state.build_model(config, info['num_classes'])
  abstract = abstract_variables(model, _input_shape(config, info))
  manager = ckpt_lib.make_manager(str(directory), max_to_keep=None,
                                  read_only=True)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise ckpt_lib.CheckpointError(
          f'No checkpoint in {directory}: nothing to run. {_NO_RANDOM_WEIGHTS}')
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ckpt_lib.CheckpointError(
          f'No checkpoint for step {step} in {directory}; available steps: '
          f'{steps}.')
    ckpt_lib.check_meta(manager, step, ckpt_lib.experiment_meta(config),
                        fields=MODEL_FIELDS)
    ckpt_lib.check_fits(manager, step, abstract)
    variables = ckpt_lib.restore_model(
        manager, step, abstract, ema=ema,
        where=f'Checkpoint step {step} in {directory}',
        retry='Use another step (--checkpoint=RUN/checkpoints/STEP).')
  finally:
    manager.close()
  logging.info('Restored %s (%s%s) from step %d of %s.', config.model,
               info['task'], ', EMA weights' if ema else '', step, directory)
  return InferenceModel(
      model=model, variables=variables, task=info['task'],
      num_classes=info['num_classes'], class_names=info['class_names'],
      step=step, ignore_label=info['ignore_label'],
      image_shape=info['image_shape'], checkpoint_dir=str(directory))
