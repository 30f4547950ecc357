"""A workdir's identity and ownership: the experiment record and the lock.

experiment.json records what a workdir holds: the experiment's identity (model,
task, classes, optimizer; another identity is refused), its optimizer
hyperparameters (a change is refused unless config.allow_hparam_changes says
it is meant; the global batch has its own flag, allow_batch_size_change) and
its topology (devices, processes and what the data order depends on: a run
whose order depends on the process count is refused on another count).
lock.json names the one run that owns the workdir; a second run
is refused, a lock left by a dead process on this host is taken over.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from jaxres import checkpoint as ckpt_lib

EXPERIMENT_FILE = 'experiment.json'
LOCK_FILE = 'lock.json'

# Changing these mid-run changes the optimisation the checkpoints came from.
# Durations may change (e.g. train longer); these need allow_hparam_changes,
# batch_size needs allow_batch_size_change (see trainer.rescale_for_batch).
HPARAM_FIELDS = ('seed', 'batch_size', 'learning_rate', 'lr_base_batch_size',
                 'momentum', 'nesterov', 'weight_decay', 'adam_b1', 'adam_b2',
                 'schedule', 'poly_power', 'lr_decay_epochs', 'grad_clip_norm',
                 'label_smoothing', 'losses', 'loss_weights', 'class_weights')


class WorkdirError(RuntimeError):
  """The workdir holds another experiment or is in use by another run."""


def _hparams(config) -> dict:
  values = {k: config[k] for k in HPARAM_FIELDS if k in config}
  values = {k: v.to_dict() if hasattr(v, 'to_dict') else v
            for k, v in values.items()}
  return json.loads(json.dumps(values, default=str))


def read_record(workdir) -> dict:
  """The workdir's experiment.json, or {} for a new workdir."""
  path = epath.Path(workdir) / EXPERIMENT_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def recorded_batch_size(record: dict):
  return record.get('hparams', {}).get('batch_size')


def batch_size_message(workdir, old, new) -> str:
  return (
      f'{workdir} holds a run with global batch {old}; this config has {new}. '
      'The learning-rate schedule (in steps) and the data order (step k '
      'reads examples [k B, (k + 1) B) of its epoch) depend on the global '
      'batch, so this would not continue the same run. Keep '
      f'--config.batch_size={old} (it stays the global batch on any number '
      'of devices and processes, and must divide by the device count), or '
      'pass --config.allow_batch_size_change=True to continue with '
      f'{new}: the step counter is rescaled to keep the examples seen '
      f'(step x {old} / {new}), the learning rate is recomputed as '
      'learning_rate x batch_size / lr_base_batch_size, durations in epochs '
      'or examples are recomputed, and the earlier checkpoints are kept in '
      f'checkpoints-batch{old}-step<N>/. Nothing in the workdir was changed.')


def check_workdir(config, workdir):
  """Refuses a workdir of another experiment or with other hyperparameters."""
  saved = read_record(workdir)
  if not saved:
    return
  problems = ckpt_lib.meta_mismatches(
      {k: v for k, v in saved.items() if k not in ('hparams', 'topology')},
      ckpt_lib.experiment_meta(config))
  if problems:
    raise WorkdirError(
        f'{workdir} belongs to a different experiment:\n  ' +
        '\n  '.join(problems) + '\nUse another --workdir (nothing in this '
        'one was changed).')
  saved_hparams, hparams = dict(saved.get('hparams', {})), _hparams(config)
  old_batch = saved_hparams.pop('batch_size', None)
  new_batch = hparams.pop('batch_size', None)
  if (old_batch is not None and old_batch != new_batch and
      not config.get('allow_batch_size_change', False)):
    raise WorkdirError(batch_size_message(workdir, old_batch, new_batch))
  changed = ckpt_lib.meta_mismatches(saved_hparams, hparams)
  if changed and not config.allow_hparam_changes:
    raise WorkdirError(
        f'{workdir} holds a run with other hyperparameters:\n  ' +
        '\n  '.join(c.replace('checkpoint has', 'the run has')
                    for c in changed) +
        '\nContinuing it would mix two optimisations. Use another --workdir, '
        'or pass --config.allow_hparam_changes=True if the change is meant.')
  if changed:
    logging.warning('Continuing %s with changed hyperparameters (allowed by '
                    'config.allow_hparam_changes):\n  %s', workdir,
                    '\n  '.join(changed))


def topology(data_order: str) -> dict:
  return {'devices': jax.device_count(), 'processes': jax.process_count(),
          'data_order': data_order}


def check_topology(record: dict, data_order: str, workdir):
  """Refuses to continue a run whose data order this topology would change.

  Device and process counts may change when the order does not depend on
  them ('global'); a run that read TFDS shards per process continues only on
  the same number of processes.
  """
  saved = record.get('topology')
  if not saved:
    return
  if saved['data_order'] != data_order:
    if saved['data_order'] == 'global':
      raise WorkdirError(
          f'The run in {workdir} reads its training data in a global order '
          f'(the same on any number of processes); with '
          f'config.tfds_read=shards on {jax.process_count()} processes each '
          "process would read its own part instead, and the examples would "
          "change. Set --config.tfds_read=auto (or stream) to continue it.")
    raise WorkdirError(
        f'The run in {workdir} read its TFDS training data in per-process '
        f'shards ({saved["data_order"]}): which examples a step sees depends '
        f'on the number of processes, and this run has '
        f'{jax.process_count()}. Continue it on {saved["processes"]} '
        'processes (any number of devices each, the global batch unchanged). '
        'A run that must survive a change of topology starts with '
        '--config.tfds_read=stream: every process then reads the whole '
        'record stream (P times the reads) and the order does not depend on '
        'P. Nothing in the workdir was changed.')
  if (saved['devices'], saved['processes']) != (jax.device_count(),
                                                 jax.process_count()):
    logging.info('Continuing the run in %s on %d devices in %d processes (it '
                 'ran on %d in %d); the data order does not depend on them.',
                 workdir, jax.device_count(), jax.process_count(),
                 saved['devices'], saved['processes'])


def write_experiment_record(config, workdir, data_order: str):
  """Records identity, hyperparameters and topology (process 0; checks have
  passed)."""
  if jax.process_index() == 0:
    path = epath.Path(workdir) / EXPERIMENT_FILE
    record = {**ckpt_lib.experiment_meta(config), 'hparams': _hparams(config),
              'topology': topology(data_order)}
    path.write_text(json.dumps(record, indent=2))


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Owns a workdir for one run (all processes of a multi-host run share it).

  Process 0 creates lock.json atomically; the others learn the outcome from it.
  On exit the lock is removed, and a workdir this run created is removed again
  if the run left nothing in it (a run refused before its first step).
  """

  def __init__(self, workdir):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._created_workdir = False
    self._held = False

  def _try_acquire(self) -> str:
    """'' on success, else the reason."""
    self._created_workdir = not self.workdir.exists()
    self.workdir.mkdir(parents=True, exist_ok=True)
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S'),
          'processes': jax.process_count()}
    for _ in range(2):
      try:
        # 'x': create only if absent, atomically (local filesystems; a bucket
        # without it gets a plain write after the existence check).
        try:
          with self.path.open('x') as f:
            f.write(json.dumps(me))
        except ValueError:
          if self.path.exists():
            raise FileExistsError(str(self.path)) from None
          self.path.write_text(json.dumps(me))
        self._held = True
        return ''
      except FileExistsError:
        try:
          holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
          holder = {}
        same_host = holder.get('host') == me['host']
        if same_host and not _alive(int(holder.get('pid', 0) or 0)):
          logging.warning('Taking over the lock of a run that is no longer '
                          'running (%s).', holder)
          self.path.unlink(missing_ok=True)
          continue
        return (f'{self.workdir} is in use by another run (host '
                f'{holder.get("host")}, pid {holder.get("pid")}, started '
                f'{holder.get("started")}). Wait for it to end or use another '
                f'--workdir; if no run is using it, delete {self.path}.')
    return f'Could not take the lock {self.path}.'

  def __enter__(self):
    reason = self._try_acquire() if jax.process_index() == 0 else ''
    if jax.process_count() > 1:
      failed = multihost_utils.broadcast_one_to_all(np.int32(bool(reason)))
      reason = reason or ('the workdir is in use by another run (see process 0)'
                          if int(failed) else '')
    if reason:
      self._cleanup()
      raise WorkdirError(reason)
    return self

  def _cleanup(self):
    if self._held:
      self.path.unlink(missing_ok=True)
      self._held = False
    if self._created_workdir and self.workdir.exists() and not any(
        self.workdir.iterdir()):
      self.workdir.rmdir()

  def __exit__(self, *exc):
    self._cleanup()
