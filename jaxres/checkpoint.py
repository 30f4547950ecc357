"""Orbax checkpointing: periodic async saves, resume, and safe restore.

A checkpoint holds the whole TrainState (step, params, batch_stats, opt_state)
and a small JSON `meta` item describing the experiment (model, classes,
optimizer, ...). The data order and every rng are functions of (seed, step), so
the step inside the state is all a resumed run needs to continue exactly.
"""
import json
import logging
import os
import time

from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not fit the current config."""


# Config fields that must agree between a checkpoint and the run restoring it.
IDENTITY_FIELDS = ('task', 'model', 'num_classes', 'optimizer', 'model_kwargs')


def experiment_meta(config) -> dict:
  meta = {}
  for key in IDENTITY_FIELDS:
    value = config.get(key)
    if hasattr(value, 'to_dict'):
      value = value.to_dict()
    meta[key] = value
  return json.loads(json.dumps(meta, default=str))


def meta_mismatches(saved: dict, current: dict) -> list[str]:
  return [f'{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}'
          for k in sorted(set(saved) | set(current))
          if saved.get(k) != current.get(k)]


def make_manager(directory: str, *, max_to_keep: int | None,
                 read_only: bool = False, async_save: bool = True):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save)
  if '://' not in str(directory):  # Buckets (gs://...) stay as they are.
    directory = os.path.abspath(directory)
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


def save(manager, step: int, state, meta: dict, force: bool = False) -> bool:
  return manager.save(
      step, force=force,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta)))


def abstract_like(state, shardings=None):
  """ShapeDtypeStructs (with shardings) describing where to restore into."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: getattr(x, 'sharding', None), state)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


def _leaf_shapes(tree, prefix) -> dict:
  """{'params/conv1/kernel': shape} for the dict subtrees params/batch_stats."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
             for k in path]
    if names and names[0] in prefix:
      out['/'.join(names)] = tuple(getattr(leaf, 'shape', ()))
  return out


def _check_fits(manager, step, abstract_state):
  """Names every parameter whose presence or shape differs from the config's."""
  try:
    saved_tree = manager.item_metadata(step)['state']
  except Exception:  # pylint: disable=broad-except
    return  # Unreadable metadata: the restore itself reports it.
  if saved_tree is None:
    return
  prefix = ('params', 'batch_stats')
  saved = _leaf_shapes(saved_tree, prefix)
  wanted = _leaf_shapes(abstract_state, prefix)
  problems = [f'{k}: checkpoint {saved.get(k, "missing")}, model '
              f'{wanted.get(k, "missing")}'
              for k in sorted(set(saved) | set(wanted))
              if saved.get(k) != wanted.get(k)]
  if problems:
    more = f' (and {len(problems) - 20} more)' if len(problems) > 20 else ''
    raise CheckpointError(
        f'Checkpoint step {step} in {manager.directory} does not fit the model '
        'built from the config:\n  ' + '\n  '.join(problems[:20]) + more +
        '\nCheck config.model, num_classes and model_kwargs against the run '
        'that wrote the checkpoint.')


def _restore_step(manager, step, abstract_state, meta):
  saved_meta = manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  problems = meta_mismatches(saved_meta, meta) if meta is not None else []
  if problems:
    raise CheckpointError(
        f'Checkpoint step {step} in {manager.directory} was written by a '
        'different experiment:\n  ' + '\n  '.join(problems) +
        '\nUse a new --workdir for this config, or set the config back to '
        'match the checkpoint.')
  _check_fits(manager, step, abstract_state)
  restored = manager.restore(
      step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def _set_aside(manager, step):
  """Renames an unreadable step directory so a new save can reuse the step."""
  if jax.process_index() == 0:
    src = epath.Path(manager.directory) / str(step)
    dst = src.parent / f'{step}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}'
    src.rename(dst)
    logging.warning('Moved unreadable checkpoint %s to %s (kept, not deleted).',
                    src, dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'jaxres_set_aside_{step}')
  manager.reload()


def restore_latest(manager, abstract_state, meta: dict | None,
                   step: int | None = None, set_aside_unreadable: bool = False):
  """Restores `step` (or the newest readable step); (None, None) if none.

  A checkpoint that cannot be read (truncated file, missing directory) is
  reported and skipped in favour of the next older one; with
  `set_aside_unreadable` it is renamed `<step>.unreadable-<time>` so training
  can write that step again. A checkpoint from a different experiment is an
  error, never skipped.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise CheckpointError(
          f'No checkpoint for step {step} in {manager.directory}; available '
          f'steps: {sorted(steps) or "none"}.')
    return _restore_step(manager, step, abstract_state, meta), step
  for candidate in steps:
    try:
      return _restore_step(manager, candidate, abstract_state, meta), candidate
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Checkpoint step %d in %s is unreadable (%s: %s); '
                      'trying the next older one.', candidate,
                      manager.directory, type(e).__name__, str(e)[:500])
      if set_aside_unreadable:
        _set_aside(manager, candidate)
  if steps:
    raise CheckpointError(
        f'None of the checkpoints {sorted(steps)} in {manager.directory} could '
        'be read; see the warnings above. Nothing was deleted.')
  return None, None
