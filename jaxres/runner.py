"""Runs a config in a workdir and turns user mistakes into clear exits.

Errors caused by the user's input (config, data, checkpoint, weights file) are
one short message on stderr and exit code 2; nothing in the workdir is changed
before the checks have passed (the trainer writes its records only when it is
about to take its first step). Exit codes:

  0  done, or stopped by SIGTERM after saving (preemption)
  2  bad input: config, data, checkpoint, workdir, weights file
  3  the loss or the gradient became NaN or inf
  4  a checkpoint could not be written (disk full, permissions, I/O)
  130  stopped by Ctrl-C after saving
"""
import logging
import os
import sys

from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks
from jaxres import workdir as workdir_lib


def enable_compilation_cache(config):
  cache_dir = config.compilation_cache_dir
  if cache_dir is None:
    cache_dir = os.path.join(os.path.expanduser('~'), '.cache', 'jaxres', 'xla')
  if not cache_dir:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def user_errors() -> tuple:
  """Exception types that mean bad input (exit 2, no traceback)."""
  from jaxres.convert import ConvertError  # pylint: disable=g-import-not-at-top
  from jaxres.data import errors  # pylint: disable=g-import-not-at-top
  return (config_checks.ConfigError, ckpt_lib.CheckpointError,
          workdir_lib.WorkdirError, ConvertError, errors.DatasetNotFoundError,
          errors.LabelError)


def run(config, workdir: str, mode: str = 'train', step=None):
  """Runs `mode` ('train' or 'eval') for `config`; exits non-zero on bad input."""
  from jaxres import progress  # pylint: disable=g-import-not-at-top
  from jaxres import trainer  # pylint: disable=g-import-not-at-top
  try:
    config_checks.check_config(config)
    workdir_lib.check_workdir(config, workdir)
    enable_compilation_cache(config)
    return trainer.train_and_evaluate(config, workdir,
                                      eval_only=(mode == 'eval'),
                                      checkpoint_step=step)
  except user_errors() as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except progress.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(3)
  except ckpt_lib.SaveError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(4)
  except progress.Interrupted as e:
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    # Ctrl-C before training started (nothing to save) or during a save.
    logging.warning('Interrupted before a checkpoint could be written.')
    sys.exit(130)
