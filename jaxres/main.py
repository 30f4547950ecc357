r"""Entry point: `python -m jaxres.main --config=configs/X.py --workdir=DIR`.

Installed, the same program is `jaxres-train`. Every config field can be
overridden: `--config.batch_size=256`. `--mode=eval` restores the latest (or
`--step`) checkpoint and only evaluates. `--verbose` shows the libraries' own
start-up and INFO lines, hidden by default.

A mistyped `--config=` path, an unknown flag or config field, or a value of the
wrong type stops the program before JAX or TensorFlow is imported, with one
message and exit status 2. `parse_flags` and `quiet_libraries` serve
`jaxres.predict` too.
"""
import difflib
import importlib.util
import logging
import os
import re
import sys
import tempfile

from jaxres import host_memory

# Before any library starts a thread (see host_memory): XLA:CPU's step buffers
# stay mapped between steps.
try:
  host_memory.keep_step_buffers_mapped()
except ValueError as e:
  print(f'jaxres: {e}', file=sys.stderr)
  sys.exit(2)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
USAGE_ERROR = 2


def _define_flags():
  flags.DEFINE_string('workdir', None,
                      'Directory for checkpoints and TensorBoard logs.')
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                    'train: train and evaluate (resuming from the workdir). '
                    'eval: restore a checkpoint and evaluate only.')
  flags.DEFINE_integer('step', None, 'With --mode=eval: the checkpoint step '
                       '(default latest).')
  flags.DEFINE_bool('distributed', False,
                    'Call jax.distributed.initialize() (multi-host). On Cloud '
                    'TPU and SLURM the arguments are detected; elsewhere pass '
                    '--coordinator_address, --num_processes and --process_id.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Number of processes.')
  flags.DEFINE_integer('process_id', None, 'Index of this process.')
  define_common_flags('Path to a config file, e.g. configs/quickstart.py.')
  flags.mark_flags_as_required(['config', 'workdir'])


def define_common_flags(config_help: str):
  """--config (a file, with --config.<field> overrides) and --verbose."""
  config_flags.DEFINE_config_file('config', None, config_help,
                                  lock_config=True)
  flags.DEFINE_bool('verbose', False,
                    'Show the libraries\' own log lines (TensorFlow start-up, '
                    'Orbax and JAX INFO lines), hidden by default.')


# ---------------------------------------------------------------------------
# Command-line mistakes: one message naming the fix, exit status 2.
# ---------------------------------------------------------------------------

def fail(message: str):
  """Prints one line naming the fix and exits with status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _config_arg(argv):
  """(index in argv, prefix, path, suffix) of `--config=PATH[:ARGS]`."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith('--config='):
      prefix, value = '--config=', arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      i, prefix, value = i + 1, '', argv[i + 1]
    else:
      continue
    path, sep, args = value.partition(':') if '.py:' in value else (value, '',
                                                                    '')
    return i, prefix, path, sep + args
  return None


def _installed_configs_dir():
  spec = importlib.util.find_spec('configs')
  return os.path.dirname(spec.origin) if spec and spec.origin else None


def _check_config_file(path: str) -> str:
  """The config file to read; exits with a hint if there is none.

  `configs/X.py` that is not in the working directory is taken from the
  installed `configs` package, so the installed commands run anywhere.
  """
  if os.path.isfile(path):
    return path
  folder = os.path.dirname(path) or '.'
  if not os.path.isdir(folder) and os.path.normpath(folder) == 'configs':
    folder = _installed_configs_dir() or folder
    if os.path.isfile(os.path.join(folder, os.path.basename(path))):
      return os.path.join(folder, os.path.basename(path))
  hint = ''
  if os.path.isdir(folder):
    close = difflib.get_close_matches(
        os.path.basename(path),
        [f for f in os.listdir(folder) if f.endswith('.py')], n=3)
    if close:
      hint = ' Did you mean ' + ' or '.join(
          f'--config={os.path.join(os.path.dirname(path), f)}'
          for f in close) + '?'
  else:
    hint = (f' There is no folder {folder!r} here (working directory '
            f'{os.getcwd()}): run from the jaxres clone or give the full path.')
  fail(f'--config={path}: no such config file.{hint} A config is a Python '
       'file with get_config(), e.g. --config=configs/quickstart.py.')


def _make_configs_importable(config_path: str):
  """Puts the folder holding `configs/` first on sys.path.

  Config files say `from configs import common`. For a config inside a
  clone (`CLONE/configs/x.py`, `CLONE/tests/x.py`) the clone's `configs`
  package must win over an installed copy, so a config you edit is the one
  that runs, whatever the working directory.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(config_path)))
  if os.path.isfile(os.path.join(root, 'configs', '__init__.py')):
    sys.path.insert(0, root)


def _field_hint(flag_name: str) -> str:
  """'config.batch_size takes int values (now 128)' for `config.batch_size`."""
  try:
    value = FLAGS['config'].value
    for key in flag_name.split('.')[1:]:
      value = value[key]
  except Exception:  # pylint: disable=broad-except
    return ''
  if value is None:
    return ''
  return (f' config.{flag_name[7:]} takes {type(value).__name__} values (now '
          f'{value!r}).')


def _sentence(text) -> str:
  text = str(text).strip()
  return text if text.endswith(('.', '?', '!')) else text + '.'


def _unknown_field(argv, error) -> str:
  """'--config.batchsize: no such field; did you mean --config.batch_size?'"""
  text = str(error.args[0] if error.args else error).replace('\\', '')
  names = re.findall(r"'(\w+)'|\"(\w+)\"", text)
  field = names[0][0] or names[0][1] if names else '?'
  suggestion = names[1][0] or names[1][1] if len(names) > 1 else None
  flag = next((a.split('=', 1)[0] for a in argv
               if a.startswith('--config.') and field in a),
              '--config.' + field)
  hint = (f' Did you mean {flag[:flag.rindex(".") + 1]}{suggestion}?'
          if suggestion else '')
  return (f'bad --config override {flag}: the config has no field '
          f'{field!r}.{hint} Every '
          '--config.<field> must name a field of the config file (see its '
          'get_config()).')


def parse_flags(argv):
  """absl's flag parser, with one-line errors and exit status 2."""
  found = _config_arg(argv)
  path = None
  if found:
    index, prefix, path, suffix = found
    path = _check_config_file(path)
    argv = [*argv[:index], prefix + path + suffix, *argv[index + 1:]]
    _make_configs_importable(path)
  try:
    rest = FLAGS(argv)
  except flags.IllegalFlagValueError as e:
    name = str(e).split('=', 1)[0].removeprefix('flag --')
    if name == 'config':  # The config file itself raised: show where.
      fail(f'{e}\nFix the config file {path}.')
    if name.startswith('config.'):
      fail(f'{_sentence(e)}{_field_hint(name)} Give a value of that type.')
    fail(f'{_sentence(e)} Run with --helpshort to see the flags.')
  except flags.Error as e:
    fail(f'{_sentence(e)} Run with --helpshort to see the flags.')
  except SyntaxError as e:
    fail(f'{e.filename}, line {e.lineno}: {e.msg}. Fix the config file.')
  except (AttributeError, KeyError) as e:
    # ml_collections: a `--config.<field>` that names no field of the config.
    fail(_unknown_field(argv, e))
  except (TypeError, ValueError) as e:
    fail(f'bad --config override: {_sentence(e)} Give a value of the '
         'field\'s type.')
  try:
    FLAGS['config'].value.get('task')
  except OSError as e:  # The config file could not be loaded.
    fail(' '.join(line.strip() for line in str(e).splitlines()))
  return rest


# ---------------------------------------------------------------------------
# Console: jaxres's own lines; the libraries' chatter only with --verbose.
# ---------------------------------------------------------------------------

class _QuietLibraries(logging.Filter):
  """INFO lines from jaxres and clu (metrics) only; Orbax's errors only."""

  _JAXRES = os.path.dirname(os.path.abspath(__file__)) + os.sep
  _CLU = f'{os.sep}clu{os.sep}'
  _ORBAX = f'{os.sep}orbax{os.sep}'

  def filter(self, record):
    path = record.pathname
    if path.startswith(self._JAXRES) or self._CLU in path:
      return True
    if self._ORBAX in path:  # e.g. "Given directory is read only".
      return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING


def quiet_libraries(verbose: bool):
  """Hides TensorFlow's start-up lines and other libraries' INFO lines.

  Call before TensorFlow is imported (it reads TF_CPP_MIN_LOG_LEVEL once).
  """
  if verbose:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())


# Datasets read without TensorFlow (numpy, PIL and threads): a run on one of
# them, without TF augmentations, does not import it at all (~10 CPU seconds
# of start-up on a 2-core machine). TensorBoard files need no TensorFlow
# (tensorboard_writer.py).
TF_FREE_DATASETS = ('shapes', 'shapes_seg', 'synthetic', 'folder', 'voc',
                    'ade20k')


def needs_tensorflow(config) -> bool:
  """Whether the run reads its data (or augments) with TensorFlow."""
  augment = config.get('augment') or 'none'
  return (config.get('dataset') not in TF_FREE_DATASETS or augment != 'none'
          or bool(config.get('random_erasing')))


def _import_tensorflow(quiet: bool):
  """Imports TensorFlow early, with its C++ start-up lines hidden if quiet.

  TensorFlow serves the TensorBoard writers and the TFDS input pipelines, on
  the CPU only: it is kept off the accelerators before JAX starts. Its start-up
  lines (oneDNN, CPU instructions) are written to the stderr file descriptor
  before TF_CPP_MIN_LOG_LEVEL is read, so they are caught there; if the import
  fails they are shown with the error.
  """
  if importlib.util.find_spec('tensorflow') is None:
    return
  if not quiet:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  else:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
      os.dup2(caught.fileno(), 2)
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
      except BaseException:
        os.dup2(saved, 2)
        caught.seek(0)
        sys.stderr.write(caught.read().decode(errors='replace'))
        raise
      finally:
        os.dup2(saved, 2)
        os.close(saved)
  tf.config.set_visible_devices([], 'GPU')


# ---------------------------------------------------------------------------
# Train or evaluate.
# ---------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; flags are written --name=value.')
  quiet_libraries(FLAGS.verbose)
  if needs_tensorflow(FLAGS.config):
    _import_tensorflow(quiet=not FLAGS.verbose)
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  if jax.process_index() > 0:
    # Console logging and TensorBoard come from process 0 only.
    logging.getLogger().setLevel(logging.WARNING)
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.info('JAX process %d/%d, %d local / %d global devices (%s).',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  from jaxres import runner  # pylint: disable=g-import-not-at-top
  runner.run(FLAGS.config, FLAGS.workdir, mode=FLAGS.mode, step=FLAGS.step)


def run():
  """`jaxres-train` and `python -m jaxres.main`."""
  _define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
