"""Dispatch a config to its trainer, with the checks that protect a workdir.

Errors caused by the user's input (config, data, checkpoint) are turned into a
one-paragraph message and a non-zero exit code; nothing in the workdir is
changed before those checks have passed.
"""
import json
import logging
import os
import sys

from etils import epath

from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks

EXPERIMENT_FILE = 'experiment.json'


class WorkdirError(RuntimeError):
  """The workdir holds a different experiment."""


def check_workdir(config, workdir: str, write: bool):
  """Refuses a workdir written by another experiment; records ours."""
  # epath: the workdir may be a bucket (gs://...) as well as a local folder.
  path = epath.Path(workdir) / EXPERIMENT_FILE
  meta = ckpt_lib.experiment_meta(config)
  if path.exists():
    saved = json.loads(path.read_text())
    problems = ckpt_lib.meta_mismatches(saved, meta)
    if problems:
      raise WorkdirError(
          f'{workdir} belongs to a different experiment:\n  ' +
          '\n  '.join(problems) + '\nUse another --workdir (nothing in this '
          'one was changed).')
  elif write:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2))


def enable_compilation_cache(config):
  cache_dir = config.get('compilation_cache_dir', None)
  if cache_dir is None:
    cache_dir = os.path.join(os.path.expanduser('~'), '.cache', 'jaxres', 'xla')
  if not cache_dir:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def _user_errors():
  errors = [config_checks.ConfigError, ckpt_lib.CheckpointError, WorkdirError]
  try:
    from jaxres.data import DatasetNotFoundError  # pylint: disable=g-import-not-at-top
    errors.append(DatasetNotFoundError)
  except ImportError:
    pass
  try:
    from jaxres.convert import ConvertError  # pylint: disable=g-import-not-at-top
    errors.append(ConvertError)
  except ImportError:
    pass
  try:
    from jaxres.data.segmentation import LabelError  # pylint: disable=g-import-not-at-top
    errors.append(LabelError)
  except ImportError:
    pass
  return tuple(errors)


def run(config, workdir: str, mode: str = 'train', step=None):
  """Runs `mode` ('train' or 'eval') for `config`; exits non-zero on bad input."""
  from jaxres import train  # pylint: disable=g-import-not-at-top
  try:
    config_checks.check_config(config)
    import jax  # pylint: disable=g-import-not-at-top
    check_workdir(config, workdir,
                  write=(mode == 'train' and jax.process_index() == 0))
    enable_compilation_cache(config)
    if config.task == 'classification':
      trainer = train.train_and_evaluate
    elif config.task == 'segmentation':
      from jaxres import train_seg  # pylint: disable=g-import-not-at-top
      trainer = train_seg.train_and_evaluate
    else:
      raise config_checks.ConfigError(
          f'config.task={config.task!r}; choose classification or segmentation.')
    return trainer(config, workdir, eval_only=(mode == 'eval'),
                   checkpoint_step=step)
  except _user_errors() as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(3)
