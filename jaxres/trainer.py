"""The training loop every task shares: train and evaluate over a Mesh.

One readable function in banner sections: mesh, input, model and state,
start-up (resume > init_from > fresh), jitted steps, evaluation, the loop and
its teardown. A task (`jaxres.tasks`) supplies its data, optimizer, steps and
evaluator; everything else lives here once.

Nothing is written into the workdir until the run is about to take its first
step: a run refused by a check (config, data, checkpoint, init file) leaves
the workdir as it found it.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import signal
from typing import TYPE_CHECKING

from etils import epath
import jax
from jax.experimental import multihost_utils

if TYPE_CHECKING:
  import ml_collections  # pylint: disable=g-import-not-at-top

from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks
from jaxres import data as data_lib
from jaxres import durations as durations_lib
from jaxres import optim
from jaxres import progress as progress_lib
from jaxres import tasks
from jaxres import tensorboard_writer
from jaxres import train_state
from jaxres import workdir as workdir_lib
from jaxres.sharding import DataParallel

DATASET_INFO_FILE = 'dataset.json'
METRICS_FILE = 'metrics.json'  # The latest evaluation, for a finished run.
CONFIG_FILE = 'config.json'
PARAMETERS_FILE = 'parameters.txt'


def _write_text(path: epath.Path, text: str):
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _writer(logdir: epath.Path):
  """TensorBoard only (the loop logs its own console lines), process 0 only.

  Written without TensorFlow (tensorboard_writer.py)."""
  if jax.process_index() > 0:
    return tensorboard_writer.NullWriter()
  return tensorboard_writer.SummaryWriter(str(logdir))


def _log_parameters(params, model_name: str, workdir: epath.Path):
  """A short summary on the console, the full table in the workdir."""
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  per_module = ', '.join(f'{k} {count(v):,}' for k, v in params.items())
  _write_text(workdir / PARAMETERS_FILE,
              parameter_overview.get_parameter_overview(params) + '\n')
  logging.info('%s: %s parameters (%s); table in %s', model_name,
               f'{count(params):,}', per_module, workdir / PARAMETERS_FILE)


def _read_final_metrics(workdir: epath.Path):
  path = workdir / METRICS_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def train_and_evaluate(config: 'ml_collections.ConfigDict', workdir: str,
                       eval_only: bool = False, checkpoint_step=None):
  """Trains (or only evaluates) the configured task; returns eval metrics."""
  config_checks.check_config(config)
  workdir = epath.Path(workdir)
  # --- Topology: what the data order depends on, checked against the run
  # being continued (device and process counts may change, not the order). ---
  record = {} if eval_only else workdir_lib.read_record(workdir)
  if not eval_only:
    config = _resolve_tfds_read(config, record)
    data_order = data_lib.train_order(config, jax.process_count())
    workdir_lib.check_topology(record, data_order, workdir)
    _check_no_interrupted_rescale(workdir)
  task = tasks.get_task(config)
  task.check_config()

  # --- Mesh: one `data` axis over every device of every process. ---
  dp = DataParallel.create(config.batch_size, config.eval_batch_size)

  # --- Input: built once; the train iterator starts at the restored step. ---
  ds = task.load_data(jax.process_index(), jax.process_count())
  steps_per_epoch = max(ds.num_train_examples // config.batch_size, 1)
  durations = functools.partial(durations_lib.steps_from, config,
                                batch_size=config.batch_size,
                                steps_per_epoch=steps_per_epoch)
  total_steps = durations('num_train')
  log_every = durations('log_every', default=100)
  eval_every = durations('eval_every', default=steps_per_epoch)
  ckpt_every = durations('checkpoint_every', default=steps_per_epoch)

  # --- Model, optimizer and the shape of the sharded state. ---
  model = task.training_model(train_state.build_model(config, ds.num_classes))
  input_shape = task.input_shape(ds)
  base_lr = config.learning_rate * config.batch_size / config.lr_base_batch_size
  lr_fn = optim.learning_rate_fn(config, base_lr, total_steps,
                                 durations('warmup', default=0), steps_per_epoch)
  tx = task.optimizer(lr_fn, train_state.params_shape(model, input_shape),
                      durations)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  init_state = jax.jit(
      functools.partial(train_state.create_train_state, model, tx,
                        input_shape=input_shape,
                        ema=bool(config.get('ema_decay'))),
      out_shardings=dp.replicated)
  abstract = jax.eval_shape(init_state, init_rng)
  abstract = ckpt_lib.abstract_like(
      abstract, jax.tree.map(lambda _: dp.replicated, abstract))

  # --- Jitted, sharded steps (state donated: updated in place). ---
  def jit_train(step_fn):
    return jax.jit(step_fn, in_shardings=(dp.replicated, dp.batch, dp.replicated),
                   out_shardings=(dp.replicated, dp.replicated),
                   donate_argnums=(0,))

  phases = [(end or total_steps, jit_train(fn))
            for end, fn in task.train_phases(ds, lr_fn, durations)]
  eval_fn, eval_out = task.eval_step(ds, dp)
  p_eval_step = jax.jit(eval_fn, in_shardings=(dp.replicated, dp.batch),
                        out_shardings=eval_out)
  evaluate = functools.partial(task.evaluate, p_eval_step, ds=ds, dp=dp)

  manager = ckpt_lib.make_manager(workdir / 'checkpoints',
                                  max_to_keep=config.max_checkpoints_to_keep,
                                  read_only=eval_only)
  meta = ckpt_lib.experiment_meta(config)
  if eval_only:
    state, step = _start_up(config, workdir, manager, abstract, meta,
                            checkpoint_step=checkpoint_step)
    writer = _writer(workdir / 'eval')  # Own events, only once restored.
    metrics = evaluate(_weights_to_evaluate(config, state), step=step,
                       writer=writer)
    writer.close()
    manager.close()
    return metrics
  # Signals are caught from the moment the workdir is this run's: a SIGTERM
  # during start-up (compiling, restoring) stops the run after its first
  # step, with a checkpoint and the lock released, like one during training.
  with workdir_lib.WorkdirLock(workdir), progress_lib.StopSignals() as signals:
    state, restored_step = _start_up(
        config, workdir, manager, abstract, meta,
        fresh=lambda: train_state.run_init(init_state, init_rng),
        replicated=dp.replicated)
    old_batch = workdir_lib.recorded_batch_size(record)
    if restored_step is not None and old_batch not in (None,
                                                       config.batch_size):
      state, restored_step, manager = _rescale_for_batch(
          config, workdir, state, restored_step, old_batch, manager, meta,
          data_order)
    if (restored_step or 0) >= total_steps:  # Restored (verified), not compiled.
      final = _read_final_metrics(workdir).get('metrics', {})
      logging.info('The run in %s is complete (step %d of %d); nothing to do. '
                   'Final evaluation: %s', workdir, restored_step, total_steps,
                   final or 'none recorded')
      manager.close()
      return final

    # --- Records of the run, written now that every check has passed. ---
    workdir_lib.write_experiment_record(config, workdir, data_order)
    _write_text(workdir / DATASET_INFO_FILE, json.dumps(
        {'task': task.name, **task.dataset_info(ds)}, indent=2))
    _write_text(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2))
    _log_parameters(state.params, config.model, workdir)
    logging.info('Training %s for %d steps (%d per epoch) on %d devices, '
                 'global batch %d, from step %d. Checkpoints: %s; TensorBoard: '
                 'tensorboard --logdir=%s; config copy: %s.', config.model,
                 total_steps, steps_per_epoch, jax.device_count(),
                 config.batch_size, restored_step or 0,
                 workdir / 'checkpoints', workdir, workdir / CONFIG_FILE)
    writer = _writer(workdir)
    if not restored_step:
      writer.write_hparams({k: v for k, v in config.to_dict().items()
                            if isinstance(v, (int, float, str, bool))})
    try:
      return _train_loop(
          config, workdir, state, restored_step, phases=phases,
          evaluate=evaluate, train_iter=dp.prefetch(ds.train_iter_fn(
              int(state.step))), manager=manager, meta=meta, writer=writer,
          rng=step_rng, accuracy_key=task.accuracy_key, signals=signals,
          every=dict(total=total_steps, log=log_every, eval=eval_every,
                     checkpoint=ckpt_every))
    finally:
      writer.close()


def _weights_to_evaluate(config, state):
  """--mode=eval evaluates one set of weights: the EMA ones with
  config.eval_use_ema, else the model's (training reports both)."""
  if not getattr(state, 'has_ema', False):
    return state
  use_ema = bool(config.get('eval_use_ema'))
  logging.info('Evaluating the %s weights (config.eval_use_ema=%s).',
               'EMA' if use_ema else 'trained', use_ema)
  return (state.ema_weights() if use_ema else state).without_ema()


def _resolve_tfds_read(config, record):
  """config with tfds_read='auto' resolved for this topology and this run."""
  if 'tfds_read' not in config:
    return config
  order = record.get('topology', {}).get('data_order')
  read = data_lib.tfds_read(config, jax.process_count(), order)
  if read == config.tfds_read:
    return config
  config = copy.deepcopy(config)
  config.tfds_read = read
  return config


RESCALE_STAGING = 'checkpoints.rescaled'


def _check_no_interrupted_rescale(workdir):
  staging = workdir / RESCALE_STAGING
  if staging.exists():
    raise workdir_lib.WorkdirError(
        f'{staging} exists: a change of the global batch (allow_batch_size_'
        'change) was interrupted after saving the rescaled state. To finish '
        'it, rename checkpoints to checkpoints-batch<old batch>-step<step> '
        f'(if still there) and {RESCALE_STAGING} to checkpoints; to undo it, '
        f'delete {RESCALE_STAGING} and set batch_size back in '
        'experiment.json. jaxres changes nothing until then.')


def rescale_step(state, new_step: int):
  """state with its step and every optimizer `count` set to new_step."""
  def put(path, leaf):
    name = ckpt_lib._path_name(path).split('/')[-1]  # pylint: disable=protected-access
    if name in ('step', 'count') and getattr(leaf, 'ndim', None) == 0:
      return jax.device_put(jax.numpy.asarray(new_step, leaf.dtype),
                            leaf.sharding)
    return leaf
  return jax.tree_util.tree_map_with_path(put, state)


def _rescale_for_batch(config, workdir, state, step, old_batch, manager, meta,
                       data_order):
  """Continues a run at another global batch (config.allow_batch_size_change).

  The step counter (and every optimizer count) becomes step x old / new, so
  the examples seen, the epoch and the point of an epoch-based schedule are
  kept. The rescaled state is saved first into a staging folder, the record is
  updated, then the old checkpoints move to checkpoints-batch<old>-step<step>
  (kept, never deleted): one folder never holds steps of two batch sizes.
  """
  new_batch = config.batch_size
  if not config.get('allow_batch_size_change', False):
    raise workdir_lib.WorkdirError(workdir_lib.batch_size_message(
        workdir, old_batch, new_batch))
  new_step, rest = divmod(step * old_batch, new_batch)
  logging.warning(
      'Global batch %d -> %d (allowed by config.allow_batch_size_change): '
      'step %d becomes step %d (%d examples seen%s); the learning rate is now '
      '%g.', old_batch, new_batch, step, new_step, step * old_batch,
      f'; the last {rest} are seen again' if rest else '',
      config.learning_rate * new_batch / config.lr_base_batch_size)
  state = rescale_step(state, new_step)
  manager.close()
  staging = workdir / RESCALE_STAGING
  staged = ckpt_lib.make_manager(staging, max_to_keep=None, async_save=False)
  ckpt_lib.save(staged, new_step, state, meta, force=True)
  staged.wait_until_finished()
  staged.close()
  workdir_lib.write_experiment_record(config, workdir, data_order)
  aside = workdir / f'checkpoints-batch{old_batch}-step{step}'
  if jax.process_index() == 0:
    (workdir / 'checkpoints').rename(aside)
    staging.rename(workdir / 'checkpoints')
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('jaxres_rescale_for_batch')
  logging.warning('The checkpoints written at batch %d are kept in %s.',
                  old_batch, aside)
  manager = ckpt_lib.make_manager(workdir / 'checkpoints',
                                  max_to_keep=config.max_checkpoints_to_keep)
  return state, new_step, manager


def _start_up(config, workdir, manager, abstract, meta, *, fresh=None,
              replicated=None, checkpoint_step=None):
  """(state, restored step): 1. resume from the workdir, 2. init_from for a
  new run, 3. fresh initialisation. Evaluation (fresh=None) needs 1."""
  state, step = ckpt_lib.restore_latest(
      manager, abstract, meta, step=checkpoint_step,
      set_aside_unreadable=fresh is not None)
  if state is not None:
    logging.info('Restored checkpoint step %d from %s.', step, workdir)
    return state, step
  if fresh is None:
    raise ckpt_lib.CheckpointError(
        f'No checkpoint in {workdir}/checkpoints: nothing to evaluate. Point '
        '--workdir at a training run (evaluation never uses random weights).')
  state = fresh()
  if config.init_from:
    state = train_state.init_from_pretrained(config, state, replicated)
  return state, None


def _train_loop(config, workdir, state, last_saved, *, phases, evaluate,
                train_iter, manager, meta, writer, rng, accuracy_key, signals,
                every):
  """Steps from state.step to every['total']: log, evaluate, save, stop."""
  total_steps = every['total']
  step = int(state.step)
  progress = progress_lib.Progress(
      writer, start_step=step, total_steps=total_steps,
      batch_size=config.batch_size, accuracy_key=accuracy_key)
  eval_metrics, pending = {}, None

  def save(step):
    try:
      ckpt_lib.save(manager, step, state, meta, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise ckpt_lib.save_error(e, manager.directory, step, last_saved) from e
    return step

  try:
    while step < total_steps:
      step_fn = next(fn for end, fn in phases if step < end)
      state, metrics = step_fn(state, next(train_iter), rng)
      # Keep at most one step queued behind this one, so that a signal
      # takes effect within a step instead of after a long dispatch queue.
      jax.block_until_ready(pending)
      pending = metrics
      step += 1
      progress.add(metrics)

      stop = signals.received or (
          jax.process_count() > 1 and manager.reached_preemption(step))
      is_last = step == total_steps
      checkpoint_due = step % every['checkpoint'] == 0 or is_last or stop
      if step % every['log'] == 0 or checkpoint_due:
        progress.report(step, last_saved)
      if step % every['eval'] == 0 or is_last:
        try:
          eval_metrics = evaluate(state, step=step, writer=writer)
        except Exception:
          if last_saved != step:  # A bad eval image never costs training.
            progress.check_finite(last_saved)
            last_saved = save(step)
          raise
        _write_text(workdir / METRICS_FILE,
                    json.dumps({'step': step, 'metrics': eval_metrics}))
      if checkpoint_due and last_saved != step:
        last_saved = save(step)
      if stop and not is_last:
        manager.wait_until_finished()
        signum = signals.signum or signal.SIGTERM  # Multi-host: preemption.
        logging.warning(
            '%s at step %d: saved checkpoint %d in %s. Run the same command '
            'to resume from it.', 'Preempted (SIGTERM)'
            if signum == signal.SIGTERM else 'Interrupted (Ctrl-C)', step,
            step, workdir / 'checkpoints')
        raise progress_lib.Interrupted(signum, step)
  finally:
    # Every exit (done, NaN, signal, error) commits the save in flight before
    # anything reports which checkpoint is the latest.
    try:
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise ckpt_lib.save_error(e, manager.directory, last_saved,
                                'unknown') from e
    finally:
      manager.close()
  return eval_metrics
