r"""Entry point: `python -m jaxres.main --config=configs/X.py --workdir=DIR`.

Every config field can be overridden: `--config.batch_size=256`.
`--mode=eval` restores the latest (or `--step`) checkpoint and only evaluates.
"""
import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

# Config files import their base (`from configs import common`): make the
# repository's `configs` package importable from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and TensorBoard logs.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                  'train: train and evaluate (resuming from the workdir). '
                  'eval: restore a checkpoint and evaluate only.')
flags.DEFINE_integer('step', None, 'With --mode=eval: the checkpoint step (default latest).')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (multi-host). On Cloud TPU '
                  'and SLURM the arguments are detected; elsewhere pass '
                  '--coordinator_address, --num_processes and --process_id.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Number of processes.')
flags.DEFINE_integer('process_id', None, 'Index of this process.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter of Orbax's internals so progress lines stay readable."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  # Keep TensorFlow (used only by tf.data input pipelines) off the accelerators.
  if 'tensorflow' in sys.modules:
    sys.modules['tensorflow'].config.set_visible_devices([], 'GPU')
  if jax.process_index() > 0:
    # Console logging and TensorBoard come from process 0 only.
    logging.getLogger().setLevel(logging.WARNING)
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.WARNING)
  config = FLAGS.config
  logging.info('JAX process %d/%d, %d local / %d global devices (%s).',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  from jaxres import runner  # pylint: disable=g-import-not-at-top
  runner.run(config, FLAGS.workdir, mode=FLAGS.mode, step=FLAGS.step)


def run():
  try:
    app.run(main)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if FLAGS.is_parsed():
      raise
    # ml_collections raises these for `--config.<field>` overrides that name
    # no field of the config, or give a value of the wrong type.
    print(f'error: bad --config override: {e}. Every --config.<field> must '
          'name a field of the config file (see its get_config()) and give a '
          'value of that field\'s type.', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  run()
