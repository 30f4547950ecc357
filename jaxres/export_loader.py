"""Loads a trained model for jaxres.export: model, variables and metadata.

One entry point, `load_trained(path, step=, ema=, expect=)`, reads either a
training run (RUN/checkpoints/STEP: the checkpoint's JSON meta names the
model, class count and model_kwargs; only params and batch_stats are read,
with an Orbax partial restore) or a directory written by jaxres.convert
(jaxres_model.json + variables/). No config is needed, which is why it is
apart from jaxres.inference; the restore itself (EMA choice, checksums,
error messages) is checkpoint.restore_model, shared with it.
"""
import dataclasses
import json
from typing import Any, Optional

from etils import epath
import jax
import jax.numpy as jnp

from jaxres import checkpoint as ckpt_lib
from jaxres import models

DATASET_INFO_FILE = 'dataset.json'  # Written by the trainer (inference.py).
CONVERTED_META_FILE = 'jaxres_model.json'  # Written by jaxres.convert.
# Where a checkpoint's TrainState keeps its EMA weights (config.ema_decay).
EMA_PARAMS = ckpt_lib.EMA_KEYS['params']
EMA_STATS = ckpt_lib.EMA_KEYS['batch_stats']


class ExportError(RuntimeError):
  """Bad arguments or input; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Trained:
  model: Any
  variables: dict  # {'params', 'batch_stats'}, float32 numpy/jax arrays.
  meta: dict  # model, num_classes, model_kwargs (and task).
  task: str
  source: str  # What was loaded, for messages.
  image_hw: Optional[tuple]  # Training input size, if the run recorded it.


def _tuples(x):
  """JSON lists back to the tuples the model fields were written from."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def _build(meta: dict, where: str, expect: dict):
  wrong = ckpt_lib.meta_mismatches(
      {k: meta.get(k) for k in expect}, expect) if expect else []
  if wrong:
    raise ckpt_lib.CheckpointError(
        f'{where} holds another model than requested:\n  ' +
        '\n  '.join(w.replace('config has', 'requested') for w in wrong))
  try:
    return models.build_model(meta['model'], num_classes=meta['num_classes'],
                              **_tuples(dict(meta.get('model_kwargs') or {})))
  except (KeyError, TypeError, ValueError) as e:
    raise ckpt_lib.CheckpointError(
        f'{where}: cannot build its model from the metadata {meta}: {e}') from e


def _check_fits(saved_shapes: dict, abstract, where: str):
  wanted = ckpt_lib.leaf_shapes(abstract)
  problems = [f'{k}: checkpoint {saved_shapes.get(k, "missing")}, model '
              f'{wanted.get(k, "missing")}'
              for k in sorted(set(saved_shapes) | set(wanted))
              if saved_shapes.get(k) != wanted.get(k)]
  if problems:
    raise ckpt_lib.CheckpointError(
        f'{where} does not fit the model its metadata names:\n  ' +
        '\n  '.join(problems[:20]) + (' ...' if len(problems) > 20 else ''))


def _abstract_variables(model, hw) -> dict:
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *(hw or (64, 64)), 3)), train=False))
  return {k: v for k, v in shapes.items() if k in ('params', 'batch_stats')}


def _task(meta: dict, abstract) -> str:
  return meta.get('task') or ('segmentation' if 'backbone' in abstract['params']
                              else 'classification')


def load_trained(path: str, *, step: Optional[int] = None, ema: bool = False,
                 expect: Optional[dict] = None) -> Trained:
  """The model and variables of a training run or a converted directory.

  `expect` ({'model': ..., 'num_classes': ...}, None values ignored) makes a
  checkpoint of any other model an error. Raises CheckpointError (missing,
  unreadable, or another model) or ExportError (bad --step / --ema).
  """
  expect = {k: v for k, v in (expect or {}).items() if v is not None}
  if (epath.Path(path) / CONVERTED_META_FILE).is_file():
    if step is not None or ema:
      raise ExportError(f'{path} is a converted weights directory (one set of '
                        'weights): --step and --ema apply to training runs.')
    from jaxres import convert  # pylint: disable=g-import-not-at-top
    variables, meta = convert.read_jaxres_checkpoint(path)
    model = _build(meta, path, expect)
    abstract = _abstract_variables(model, None)
    _check_fits(ckpt_lib.leaf_shapes(variables), abstract, path)
    return Trained(model, variables, meta, _task(meta, abstract),
                   f'converted weights {path}', None)
  return _load_run(path, step, ema, expect)


def _load_run(workdir: str, step, ema: bool, expect: dict) -> Trained:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = epath.Path(workdir).absolute() / 'checkpoints'
  if not directory.is_dir():
    steps, manager = [], None
  else:
    manager = ckpt_lib.make_manager(directory, max_to_keep=None,
                                    read_only=True)
    steps = sorted(manager.all_steps())
  try:
    if not steps:
      raise ckpt_lib.CheckpointError(
          f'No checkpoint in {directory}: nothing to export (export never uses'
          ' random weights). Point --workdir at a training run or at a '
          'directory written by python -m jaxres.convert.')
    if step is not None and step not in steps:
      raise ckpt_lib.CheckpointError(
          f'No checkpoint for step {step} in {directory}; available: {steps}.')
    step = steps[-1] if step is None else step
    where = f'checkpoint step {step} in {directory}'
    meta = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    state_tree = manager.item_metadata(step)['state']
    if meta.get('num_classes') is None:
      # config.num_classes=None: the dataset's count, recorded by the trainer.
      meta = dict(meta, num_classes=_recorded_info(workdir).get('num_classes'))
    model = _build(meta, where, expect)
    weights, stats = ((EMA_PARAMS, EMA_STATS) if ema
                      else ('params', 'batch_stats'))
    hw = _recorded_hw(workdir)
    abstract = _abstract_variables(model, hw)
    saved = {k.replace(weights, 'params', 1).replace(stats, 'batch_stats', 1): v
             for k, v in ckpt_lib.leaf_shapes(
                 state_tree, (weights, stats), model_only=True).items()}
    if not ema or EMA_PARAMS in state_tree:  # Else restore_model says why.
      _check_fits(saved, abstract, where)
    variables = ckpt_lib.restore_model(manager, step, abstract, ema=ema,
                                       where=where, retry='Use another --step.')
  finally:
    if manager is not None:
      manager.close()
  return Trained(model, variables, meta, _task(meta, abstract), where, hw)


def _recorded_info(workdir: str) -> dict:
  path = epath.Path(workdir) / DATASET_INFO_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def _recorded_hw(workdir: str) -> Optional[tuple]:
  shape = _recorded_info(workdir).get('image_shape')
  return tuple(int(s) for s in shape[:2]) if shape else None
