"""The classification trainer: sharding, checkpoints, the main path, learning."""
import functools

import jax
import numpy as np
import pytest

from tests import helpers
from tests import tiny_config as tests_tiny_config
from jaxres import checkpoint as ckpt_lib
from jaxres import optim, runner, train_state
from jaxres.tasks import classification
from jaxres.sharding import DataParallel


def tiny_config(**overrides):
  c = tests_tiny_config.get_config()
  c.unlock()
  c.shapes_train_size = 256
  c.shapes_eval_size = 100
  c.eval_batch_size = 40
  c.num_train_steps = 6
  c.checkpoint_every_steps = 3
  c.eval_every_steps = 6
  c.log_every_steps = 2
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


def _run_steps(dp, config, num_steps=2):
  model = train_state.build_model(config, 10)
  lr_fn = optim.learning_rate_fn(config, 0.1, 10, 0, 10)
  tx = optim.make_optimizer(config, lr_fn)
  state = jax.jit(functools.partial(train_state.create_train_state, model, tx,
                                    input_shape=(32, 32, 3)),
                  out_shardings=dp.replicated)(jax.random.key(0))
  cfg = classification.StepConfig(num_classes=10, label_smoothing=0.1)
  step = jax.jit(functools.partial(classification.train_step, cfg=cfg,
                                   lr_fn=lr_fn),
                 in_shardings=(dp.replicated, dp.batch, dp.replicated),
                 out_shardings=(dp.replicated, dp.replicated))
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_steps):
    batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
             'label': rng.integers(0, 10, size=(16,)).astype(np.int32)}
    state, metrics = step(state, dp.shard_batch(batch), jax.random.key(1))
    losses.append(float(metrics['loss']))
  return state, losses


def test_eight_devices_match_one_device():
  assert jax.device_count() == 8, 'conftest sets 8 CPU devices'
  config = tiny_config()
  state8, losses8 = _run_steps(DataParallel.create(16), config)
  state1, losses1 = _run_steps(DataParallel.create(16, devices=jax.devices()[:1]), config)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               (state8.params, state8.batch_stats), (state1.params, state1.batch_stats))
  # The batch really was split over 8 devices and BN statistics are global.
  assert len(state8.params['conv1']['kernel'].sharding.device_set) == 8


def test_batch_must_divide_by_device_count():
  with pytest.raises(ValueError, match='multiple of the device count'):
    DataParallel.create(12)


def test_train_resume_and_eval_only(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config()
  metrics = runner.run(config, workdir)
  assert 0.0 <= metrics['eval_top1'] <= 1.0
  assert metrics['eval_examples'] == 100  # Every example exactly once.
  manager = ckpt_lib.make_manager(f'{workdir}/checkpoints', max_to_keep=3, read_only=True)
  assert sorted(manager.all_steps()) == [3, 6]

  # A longer run in the same workdir resumes from step 6, not from scratch.
  longer = tiny_config(num_train_steps=9)
  runner.run(longer, workdir)
  manager.reload()
  assert sorted(manager.all_steps()) == [3, 6, 9]

  # Eval-only restores a named step and reproduces its evaluation.
  again = runner.run(config, workdir, mode='eval', step=6)
  assert again['eval_top1'] == pytest.approx(metrics['eval_top1'])
  assert again['eval_loss'] == pytest.approx(metrics['eval_loss'], rel=1e-5)

  # Eval-only on an empty workdir is an error, never random weights.
  with pytest.raises(SystemExit) as e:
    runner.run(config, str(tmp_path / 'empty'), mode='eval')
  assert e.value.code == 2
  assert 'nothing to evaluate' in capsys.readouterr().err


def test_main_on_mock_imagenet(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  from configs import resnet50_imagenet
  c = resnet50_imagenet.get_config()
  c.unlock()
  c.model = 'resnet18'
  c.model_kwargs.width = 8
  c.dtype = 'float32'
  c.image_size = 64
  c.batch_size = 16
  c.eval_batch_size = 24
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 2
  c.shuffle_buffer = 16
  c.compilation_cache_dir = helpers.xla_cache_dir()
  c.lock()
  with tfds.testing.mock_data(num_examples=40):
    metrics = runner.run(c, str(tmp_path / 'r'))
  assert metrics['eval_examples'] == 40
  assert np.isfinite(metrics['eval_loss'])


def test_quickstart_learns(tmp_path):
  """The README quickstart at reduced size: far above chance (10%).

  It runs with TensorFlow made unimportable (generated data and TensorBoard
  files need none), and its TensorBoard file holds what the log says.
  """
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  proc = helpers.run_main(
      str(tmp_path), '--config.shapes_train_size=3840',
      '--config.shapes_eval_size=500', '--config.num_train_epochs=3',
      # The tests' XLA cache (tests/conftest.py): its compile is the same
      # program in every run of the suite.
      f'--config.compilation_cache_dir={helpers.xla_cache_dir()}',
      base=('--config=configs/quickstart.py',),
      without_tensorflow=True, fast_compile=False)
  line = [l for l in proc.stderr.splitlines() if 'eval @ step 90' in l][-1]
  top1 = float(line.split('top-1 ')[1].split()[0])
  assert top1 > 0.6, line

  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  written = events.Scalars('eval_top1')
  assert [e.step for e in written] == [90]
  assert abs(written[0].value - top1) < 1e-4
  assert len(events.Scalars('loss')) > 1  # Every log_every_steps.


def _three_step_config():
  return tiny_config(num_train_steps=3, checkpoint_every_steps=3,
                     eval_every_steps=3)


@pytest.fixture(scope='module')
def three_step_run(tmp_path_factory):
  """A finished 3-step run (one checkpoint, step 3), read by the two tests
  below (neither changes it)."""
  workdir = str(tmp_path_factory.mktemp('three_steps'))
  runner.run(_three_step_config(), workdir)
  return workdir


def test_init_from_a_training_checkpoint(tmp_path, capsys, three_step_run):
  from tests import helpers  # pylint: disable=g-import-not-at-top
  source = three_step_run
  config = _three_step_config()
  saved = helpers.load_state(source, 3)

  dp = DataParallel.create(32)
  model = train_state.build_model(config, 10)
  tx = optim.make_optimizer(config, optim.learning_rate_fn(config, 0.1, 10, 0, 10))
  fresh = train_state.create_train_state(model, tx, jax.random.key(1), (32, 32, 3))
  with_init = tiny_config(init_from=source)
  state = train_state.init_from_pretrained(with_init, fresh, dp.replicated)
  helpers.assert_trees_equal(state.params, saved['params'])
  helpers.assert_trees_equal(state.batch_stats, saved['batch_stats'])

  # A wrong path is an error, never a run from random weights.
  with pytest.raises(SystemExit) as e:
    runner.run(tiny_config(init_from=str(tmp_path / 'nope')), str(tmp_path / 'w'))
  assert e.value.code == 2
  assert 'does not exist' in capsys.readouterr().err


def test_restore_into_a_config_that_does_not_fit(three_step_run):
  workdir = three_step_run
  manager = ckpt_lib.make_manager(f'{workdir}/checkpoints', max_to_keep=3,
                                  read_only=True)

  def abstract_state(config, num_classes):
    model = train_state.build_model(config, num_classes)
    tx = optim.make_optimizer(config, optim.learning_rate_fn(config, 0.1, 10, 0, 10))
    shapes = jax.eval_shape(lambda: train_state.create_train_state(
        model, tx, jax.random.key(0), (32, 32, 3)))
    replicated = DataParallel.create(32).replicated
    return ckpt_lib.abstract_like(shapes, jax.tree.map(lambda _: replicated, shapes))

  config = tiny_config()
  # Other number of classes: the mismatching parameters are named with shapes.
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    ckpt_lib.restore_latest(manager, abstract_state(config, 7), meta=None)
  assert 'params/fc/kernel' in str(e.value) and '(64, 10)' in str(e.value)
  assert '(64, 7)' in str(e.value)
  # Other optimizer: named from the checkpoint's experiment record.
  other = tiny_config(optimizer='adamw')
  with pytest.raises(ckpt_lib.CheckpointError, match="optimizer: checkpoint has 'sgd'"):
    ckpt_lib.restore_latest(manager, abstract_state(other, 10),
                            ckpt_lib.experiment_meta(other))
  # The matching config restores.
  state, step = ckpt_lib.restore_latest(manager, abstract_state(config, 10),
                                        ckpt_lib.experiment_meta(config))
  assert step == 3 and int(state.step) == 3
