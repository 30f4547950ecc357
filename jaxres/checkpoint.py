"""Orbax checkpointing: periodic async saves, resume, and safe restore.

A checkpoint holds the whole TrainState (step, params, batch_stats, opt_state),
a small JSON `meta` item describing the experiment (model, classes,
optimizer, ...) and `checksums`: a CRC-32 of every saved array, computed from
the arrays in memory at save time and verified after every restore, so a
flipped bit on disk is caught instead of trained on. The data order and every
rng are functions of (seed, step), so the step inside the state is all a
resumed run needs to continue exactly.

Training-only variables (the auxiliary head's, under TRAINING_ONLY names) are
saved and restored with the state, but are not part of the model: reading
only the model's variables (predict, export, init_from) skips them.
"""
import json
import logging
import time
import zlib

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from jaxres.models.aux_head import AUX_HEAD

# Top-level entries of params / batch_stats that only training uses.
TRAINING_ONLY = (AUX_HEAD,)


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not fit the current config."""


class ChecksumError(RuntimeError):
  """A restored array differs from the one that was saved (bit rot)."""


class SaveError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions, I/O)."""


def save_error(error: Exception, directory, step: int, last_saved) -> SaveError:
  """One clear message for a failed save; removes the half-written step."""
  cause, reasons = error, []
  while cause is not None and len(reasons) < 5:
    reasons.append(f'{type(cause).__name__}: {str(cause)[:300]}')
    cause = cause.__cause__ or cause.__context__
  text = ' <- '.join(reasons)
  directory = epath.Path(directory)
  free = 'unknown'
  try:
    import shutil  # pylint: disable=g-import-not-at-top
    free = f'{shutil.disk_usage(str(directory)).free / 2**20:,.0f} MiB'
  except OSError:
    pass
  if jax.process_index() == 0 and directory.exists():
    for partial in directory.glob(f'{step}.orbax-checkpoint-tmp*'):
      partial.rmtree()
  full = 'No space left on device' in text or 'ENOSPC' in text
  return SaveError(
      f'Could not write checkpoint step {step} in {directory}'
      f'{" (the disk is full)" if full else ""}; free space there: {free}. '
      f'Earlier checkpoints are intact (the latest is step {last_saved}) and '
      f'the incomplete step {step} was removed. Free some space or fix the '
      'permissions, then run the same command to resume. Cause: ' + text)


# Config fields that must agree between a checkpoint and the run restoring it.
IDENTITY_FIELDS = ('task', 'model', 'num_classes', 'optimizer', 'model_kwargs')


def experiment_meta(config) -> dict:
  meta = {}
  for key in IDENTITY_FIELDS:
    value = config.get(key)
    if hasattr(value, 'to_dict'):
      value = value.to_dict()
    meta[key] = value
  if config.get('ema_decay'):
    # Only when on, so runs without EMA keep the meta they always had; a run
    # cannot switch EMA on or off mid-way (its checkpoints lack the average).
    meta['ema'] = True
  return json.loads(json.dumps(meta, default=str))


def meta_mismatches(saved: dict, current: dict) -> list[str]:
  return [f'{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}'
          for k in sorted(set(saved) | set(current))
          if saved.get(k) != current.get(k)]


def make_manager(directory, *, max_to_keep: int | None,
                 read_only: bool = False, async_save: bool = True):
  """An Orbax manager that creates nothing until its first save."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=False, read_only=read_only,
      enable_async_checkpointing=async_save)
  # epath: the workdir may be a bucket (gs://...) as well as a local folder.
  directory = epath.Path(directory)
  if '://' not in str(directory):
    directory = directory.absolute()
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler(),
                     'checksums': ocp.JsonCheckpointHandler()})


def checksums(state) -> dict:
  """{leaf path: CRC-32 of its bytes} of a (replicated) state.

  Each process reads its own copy of every replicated array, so this works in
  multi-host runs without gathering anything.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)
    data = np.ascontiguousarray(np.asarray(leaf)).reshape(-1).view(np.uint8)
    out[_path_name(path)] = f'{zlib.crc32(data):08x}'
  return out


def save(manager, step: int, state, meta: dict, force: bool = False) -> bool:
  return manager.save(
      step, force=force,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta),
                              checksums=ocp.args.JsonSave(checksums(state))))


def verify(manager, step, tree):
  """Raises ChecksumError if a restored array of `tree` (the whole state or a
  part of it, e.g. params and batch_stats) differs from what was saved."""
  try:
    saved = manager.restore(step, args=ocp.args.Composite(
        checksums=ocp.args.JsonRestore()))['checksums']
  except Exception:  # pylint: disable=broad-except
    logging.warning('Checkpoint step %d has no checksums (written before '
                    'jaxres stored them); restored without verification.', step)
    return
  bad = sorted(k for k, v in checksums(tree).items() if saved.get(k) != v)
  if bad:
    raise ChecksumError(
        f'{len(bad)} arrays differ from what was saved (checksum mismatch): '
        f'{", ".join(bad[:5])}{" ..." if len(bad) > 5 else ""}')


def abstract_like(state, shardings=None):
  """ShapeDtypeStructs (with shardings) describing where to restore into."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: getattr(x, 'sharding', None), state)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


def _path_name(path) -> str:
  """'params/conv1/kernel', the same for a TrainState and its dict form."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in path)


def without_training_only(tree) -> dict:
  """A params or batch_stats tree without its TRAINING_ONLY entries."""
  return {k: v for k, v in tree.items() if k not in TRAINING_ONLY}


def model_variables(variables: dict) -> dict:
  """{'params', 'batch_stats', ...} without the TRAINING_ONLY entries."""
  return {c: without_training_only(tree) if hasattr(tree, 'items') else tree
          for c, tree in variables.items()}


def leaf_shapes(tree, prefix=('params', 'batch_stats'),
                model_only: bool = False) -> dict:
  """{'params/conv1/kernel': shape} for the dict subtrees params/batch_stats
  (with `model_only`, without the training-only entries)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = _path_name(path)
    parts = name.split('/')
    if parts[0] in prefix and not (model_only and len(parts) > 1
                                   and parts[1] in TRAINING_ONLY):
      out[name] = tuple(getattr(leaf, 'shape', ()))
  return out


def check_fits(manager, step, abstract_state):
  """Names every parameter whose presence or shape differs from the config's.

  A TrainState is compared whole; the variables of a model alone (inference:
  a dict without opt_state) are compared with the checkpoint's model
  variables, the training-only ones left out.
  """
  try:
    saved_tree = manager.item_metadata(step)['state']
  except Exception:  # pylint: disable=broad-except
    return  # Unreadable metadata: the restore itself reports it.
  if saved_tree is None:
    return
  prefix = ('params', 'batch_stats')
  saved = leaf_shapes(saved_tree, prefix,
                      model_only=not hasattr(abstract_state, 'opt_state'))
  wanted = leaf_shapes(abstract_state, prefix)
  problems = [f'{k}: checkpoint {saved.get(k, "missing")}, model '
              f'{wanted.get(k, "missing")}'
              for k in sorted(set(saved) | set(wanted))
              if saved.get(k) != wanted.get(k)]
  if problems:
    more = f' (and {len(problems) - 20} more)' if len(problems) > 20 else ''
    raise CheckpointError(
        f'Checkpoint step {step} in {manager.directory} does not fit the model '
        'built from the config:\n  ' + '\n  '.join(problems[:20]) + more +
        '\nCheck config.model, num_classes, model_kwargs and aux_loss_weight '
        '(0: no auxiliary head) against the run that wrote the checkpoint.')


def check_meta(manager, step, meta, fields=None):
  """Raises CheckpointError if `step` was written by another experiment.

  `fields`: compare only these (inference needs the model, not the optimizer).
  """
  saved_meta = manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  if fields is not None and meta is not None:
    saved_meta = {k: saved_meta.get(k) for k in fields if k in saved_meta}
    meta = {k: meta.get(k) for k in saved_meta}
  problems = meta_mismatches(saved_meta, meta) if meta is not None else []
  if problems:
    raise CheckpointError(
        f'Checkpoint step {step} in {manager.directory} was written by a '
        'different experiment:\n  ' + '\n  '.join(problems) +
        '\nUse a new --workdir for this config, or set the config back to '
        'match the checkpoint.')


def _restore_step(manager, step, abstract_state, meta):
  check_meta(manager, step, meta)
  check_fits(manager, step, abstract_state)
  restored = manager.restore(
      step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))['state']
  verify(manager, step, restored)
  return restored


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

  A checkpoint that cannot be read (truncated file, missing directory, a
  checksum mismatch) is reported and skipped in favour of the next older one; with
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
    try:
      return _restore_step(manager, step, abstract_state, meta), step
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'Checkpoint step {step} in {manager.directory} is unreadable '
          f'({type(e).__name__}: {str(e)[:500]}). Pick another step; nothing '
          'was changed.') from e
  for candidate in steps:
    try:
      return _restore_step(manager, candidate, abstract_state, meta), candidate
    except CheckpointError:
      raise
    except ChecksumError as e:
      if not set_aside_unreadable:  # Evaluation, predict, export: refuse.
        raise CheckpointError(
            f'Checkpoint step {candidate} in {manager.directory} fails its '
            f'checksum: {e}. It is not used; pass another step.') from e
      logging.warning('Checkpoint step %d in %s fails its checksum (%s); '
                      'trying the next older one.', candidate,
                      manager.directory, e)
      _set_aside(manager, candidate)
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


# Where a TrainState keeps its EMA weights (config.ema_decay > 0).
EMA_KEYS = {'params': 'ema_params', 'batch_stats': 'ema_batch_stats'}


def restore_variables(directory, step: int, abstract,
                      weights: str = 'params') -> dict:
  """Reads only `weights` ('params', or 'ema_params' with 'ema_batch_stats')
  and the BatchNorm statistics of a step's state, onto one device; returns
  them under their names in the state (checksums are keyed by them)."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  stats = (EMA_KEYS['batch_stats'] if weights == EMA_KEYS['params']
           else 'batch_stats')
  wanted = {weights: abstract['params']}
  if abstract.get('batch_stats'):
    wanted[stats] = abstract['batch_stats']
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      wanted)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(
        epath.Path(directory) / str(step) / 'state',
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
  restored.setdefault(stats, {})
  return restored


def restore_model(manager, step: int, abstract, *, ema: bool = False,
                  where: str, retry: str) -> dict:
  """A step's model variables {'params', 'batch_stats'}, checksums verified.

  The inference loaders' one restore (predict, evaluation, export). `ema`:
  the EMA weights and statistics instead (a run trained with
  config.ema_decay > 0). `where` names the checkpoint in messages; `retry`
  says how to pick another step. Raises CheckpointError: no EMA weights,
  damaged (checksums), or unreadable.
  """
  weights, stats = ((EMA_KEYS['params'], EMA_KEYS['batch_stats']) if ema
                    else ('params', 'batch_stats'))
  if ema:
    try:
      tree = manager.item_metadata(step)['state']
    except Exception:  # pylint: disable=broad-except
      tree = None  # Unreadable metadata: the restore below reports it.
    if tree is not None and weights not in tree:
      raise CheckpointError(
          f'--ema: {where} has no EMA weights ({weights!r} is not in its '
          'state: the run was trained without config.ema_decay). Run without '
          '--ema.')
  try:
    restored = restore_variables(manager.directory, step, abstract, weights)
    verify(manager, step, restored)
  except ChecksumError as e:
    raise CheckpointError(f'{where} is damaged: {e}. {retry}') from e
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{where} could not be read: '
                          f'{type(e).__name__}: {str(e)[:500]}') from e
  return {'params': restored[weights], 'batch_stats': restored.get(stats, {})}
