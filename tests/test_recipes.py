"""Modern recipes: Mixup/CutMix, soft-target and BCE losses, EMA, gradient
accumulation, stochastic depth, zero-init, LAMB/LARS, and a whole run."""
import functools
import os

from typing import Any

import flax.linen as nn
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import helpers
from tests import tiny_config as tests_tiny_config
from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks, export_loader, inference, mixup, optim
from jaxres import runner, train_state
from jaxres.models import resnet
from jaxres.sharding import DataParallel
from jaxres.tasks import classification

# The recipe the whole-run tests train with.
RECIPE = dict(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1,
              ema_decay=0.9, ema_warmup_steps=1, grad_accum_steps=2)
# With the input augmentations, on an image folder (the generated shapes take
# none): the whole recipe, killed and resumed.
AUGMENT = dict(augment='randaugment', random_erasing=0.25, dataset='folder',
               num_classes=3)


def tiny_config(**overrides):
  c = tests_tiny_config.get_config()
  c.unlock()
  c.shapes_train_size = 128
  c.shapes_eval_size = 32
  c.num_train_steps = 4
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 4
  c.log_every_steps = 4
  c.num_classes = 10  # Recorded in the checkpoint: export builds the fc.
  c.model_kwargs.stage_sizes = (2,)  # One stage of two blocks: compiles fast.
  c.model_kwargs.drop_path_rate = 0.1
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


# --- Mixup and CutMix ----------------------------------------------------------

@functools.lru_cache()
def _mix_fn(cfg, smoothing):
  return jax.jit(functools.partial(mixup.mix_batch, num_classes=5,
                                   smoothing=smoothing, cfg=cfg))


def _mix(cfg, seed, images, labels, smoothing=0.1):
  return _mix_fn(cfg, smoothing)(jax.random.key(seed), images, labels)


def _batch(b=6, size=16):
  rng = np.random.default_rng(0)
  return (rng.normal(size=(b, size, size, 3)).astype(np.float32),
          rng.integers(0, 5, size=(b,)).astype(np.int32))


def test_mixup_blends_images_and_labels_with_one_weight():
  images, labels = _batch()
  one_hot = np.asarray(mixup.smooth_one_hot(labels, 5, 0.1))
  for seed in range(3):
    mixed, targets, lam = _mix(mixup.MixConfig(mixup_alpha=0.4), seed, images,
                               labels)
    lam = float(lam)
    assert 0 < lam < 1
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets, lam * one_hot + (1 - lam) * one_hot[::-1],
                               rtol=1e-6)
    np.testing.assert_allclose(np.sum(targets, -1), 1, rtol=1e-6)
  # mixup_prob = 0: nothing mixed.
  mixed, targets, lam = _mix(mixup.MixConfig(mixup_alpha=0.4, prob=0.), 0,
                             images, labels)
  assert float(lam) == 1 and np.array_equal(mixed, images)
  np.testing.assert_array_equal(targets, one_hot)


def test_cutmix_box_comes_from_the_flipped_batch_with_area_one_minus_lam():
  images, labels = _batch()
  one_hot = np.asarray(mixup.smooth_one_hot(labels, 5, 0.))
  boxes = 0
  for seed in range(6):
    mixed, targets, lam = _mix(mixup.MixConfig(cutmix_alpha=1.0), seed,
                               images, labels, smoothing=0.)
    mixed, lam = np.asarray(mixed), float(lam)
    inside = np.any(mixed != images, axis=-1)  # [B, H, W]
    assert np.all(inside == inside[0])  # One box for the batch.
    # Rows 0 .. B-1 mirrored: the middle pair of an even batch swaps too.
    np.testing.assert_array_equal(mixed[inside], images[::-1][inside])
    np.testing.assert_array_equal(mixed[~inside], images[~inside])
    assert inside[0].mean() == pytest.approx(1 - lam, abs=1e-6)
    np.testing.assert_allclose(targets, lam * one_hot + (1 - lam) * one_hot[::-1],
                               rtol=1e-6)
    np.testing.assert_allclose(np.sum(targets, -1), 1, rtol=1e-6)
    boxes += 0 < lam < 1
  assert boxes >= 3
  # switch_prob picks CutMix (1) or Mixup (0) when both are on.
  both = dict(mixup_alpha=0.4, cutmix_alpha=1.0)
  picks = [jax.jit(functools.partial(
      mixup.draw, cfg=mixup.MixConfig(**both, switch_prob=p), height=8,
      width=8))(jax.random.key(1))['cutmix'] for p in (1., 0.)]
  assert [bool(p) for p in picks] == [True, False]


def test_soft_cross_entropy_and_bce_against_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  targets = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
  log_p = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  np.testing.assert_allclose(mixup.loss(logits, targets, 'ce'),
                             -np.sum(targets * log_p, -1), rtol=1e-5)
  sig = 1 / (1 + np.exp(-logits))
  bce = lambda t: -np.mean(t * np.log(sig) + (1 - t) * np.log(1 - sig), -1)
  np.testing.assert_allclose(mixup.loss(logits, targets, 'bce'), bce(targets),
                             rtol=1e-5)
  np.testing.assert_allclose(mixup.loss(logits, targets, 'bce', 0.2),
                             bce((targets > 0.2).astype(np.float32)), rtol=1e-5)


# --- EMA and gradient accumulation on a model without BatchNorm ----------------

class NormFree(nn.Module):
  """Conv, ReLU, mean pool, dense: no BatchNorm, so micro-batches add up."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


def _norm_free_state(ema=False, tx=optax.sgd(0.1, momentum=0.9)):
  return train_state.create_train_state(NormFree(), tx, jax.random.key(0),
                                        (8, 8, 3), ema=ema)


def _steps(state, cfg, num_steps, batch=16):
  step = jax.jit(functools.partial(classification.train_step, cfg=cfg,
                                   lr_fn=lambda s: 0.1))
  rng = np.random.default_rng(0)
  history = [state]
  for _ in range(num_steps):
    data = {'image': rng.normal(size=(batch, 8, 8, 3)).astype(np.float32),
            'label': rng.integers(0, 5, size=(batch,)).astype(np.int32)}
    state, metrics = step(state, data, jax.random.key(1))
    history.append(state)
  return history, metrics


def test_ema_matches_its_closed_form():
  decay, n = 0.8, 4
  cfg = classification.StepConfig(num_classes=5, ema_decay=decay)
  history, _ = _steps(_norm_free_state(ema=True), cfg, n)
  # ema_n = d^n p_0 + sum_k (1 - d) d^(n-k) p_k: the average of the weights.
  want = jax.tree.map(
      lambda *ps: decay**n * ps[0] + sum((1 - decay) * decay**(n - k) * ps[k]
                                         for k in range(1, n + 1)),
      *[s.params for s in history])
  helpers.assert_trees_close(history[-1].ema_params, want, rtol=1e-5, atol=1e-6)
  assert int(history[-1].step) == n
  # Warmup copies the model; every-k leaves the average alone in between.
  d = [float(train_state.ema_decay_at(s, 0.9, every=2, warmup_steps=2))
       for s in (1, 2, 3, 4)]
  assert d == [1., pytest.approx(0.), 1., pytest.approx(0.9)]


def test_batch_rescaling_moves_the_step_and_keeps_the_average():
  """trainer.rescale_step: the EMA has no counter of its own (its warmup and
  every-k use state.step), so only step and the optimizer counts move."""
  from jaxres import trainer  # pylint: disable=g-import-not-at-top
  state = jax.device_put(_norm_free_state(ema=True, tx=optax.adam(0.1)))
  rescaled = trainer.rescale_step(state, 12)
  assert int(rescaled.step) == 12 and int(rescaled.opt_state[0].count) == 12
  helpers.assert_trees_equal(
      (rescaled.ema_params, rescaled.ema_batch_stats, rescaled.params),
      (state.ema_params, state.ema_batch_stats, state.params))


def test_accumulated_micro_batches_equal_one_big_step():
  one = classification.StepConfig(num_classes=5, label_smoothing=0.1)
  four = classification.StepConfig(num_classes=5, label_smoothing=0.1,
                                   grad_accum_steps=4)
  (*_, big), m_big = _steps(_norm_free_state(), one, 2)
  (*_, acc), m_acc = _steps(_norm_free_state(), four, 2)
  helpers.assert_trees_close(acc.params, big.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m_acc['loss'], m_big['loss'], rtol=1e-5)
  np.testing.assert_allclose(m_acc['grad_norm'], m_big['grad_norm'], rtol=1e-5)
  assert int(acc.step) == 2  # One optimizer step per batch, not per micro.


# --- Stochastic depth and zero-init --------------------------------------------

def _tiny_resnet(**kw):
  return resnet.ResNet(stage_sizes=(1, 2), block_cls=resnet.Bottleneck,
                       width=4, num_classes=3, **kw)


def test_drop_path_is_identity_at_eval_and_at_rate_zero():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  plain, dropped = _tiny_resnet(), _tiny_resnet(drop_path_rate=0.5)

  @jax.jit
  def outputs(key):  # One compilation for every case.
    variables = plain.init(key, x, train=False)
    run = lambda m, train: m.apply(variables, x, train=train,
                                   rngs={'dropout': key},
                                   mutable=['batch_stats'])[0]
    return {'eval': (run(dropped, False), run(plain, False)),
            'train': (run(dropped, True), run(plain, True))}

  out = outputs(jax.random.key(1, impl='rbg'))
  np.testing.assert_array_equal(*out['eval'])
  assert not np.allclose(*out['train'])
  x = np.asarray(x)
  np.testing.assert_array_equal(resnet.layers.drop_path(x, 0., None), x)
  # Per example: the whole branch kept (scaled by 1 / keep) or dropped.
  y = np.asarray(resnet.layers.drop_path(jnp.ones((64, 2, 2, 3)), 0.25,
                                         jax.random.key(3)))
  assert set(np.unique(y)) == {0., np.float32(4 / 3)}
  assert np.all(y == y[:, :1, :1, :1])
  with pytest.raises(ValueError, match='drop_path_rate'):
    jax.eval_shape(functools.partial(_tiny_resnet(drop_path_rate=1.).init,
                                     train=False), jax.random.key(0), x)


def test_zero_init_makes_every_block_its_shortcut():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  model = _tiny_resnet(zero_init_last_bn=True)

  @jax.jit
  def intermediates(key):
    variables = model.init(key, x, train=False)
    _, state = model.apply(variables, x, train=False,
                           capture_intermediates=True, mutable=['intermediates'])
    return state['intermediates']

  got = intermediates(jax.random.key(1, impl='rbg'))
  out = lambda name: got[name]['__call__'][0]
  shortcut = lambda name: got[name]['downsample_bn']['__call__'][0]
  np.testing.assert_allclose(out('layer1_0'), nn.relu(shortcut('layer1_0')))
  np.testing.assert_allclose(out('layer2_0'), nn.relu(shortcut('layer2_0')))
  np.testing.assert_allclose(out('layer2_1'), out('layer2_0'))  # Identity.


# --- Optimizers and the weight-decay mask --------------------------------------

PARAMS = {'conv': {'kernel': jnp.full((3, 3, 2, 4), 0.5)},
          'bn': {'scale': jnp.full((4,), 5.), 'bias': jnp.full((4,), 5.)},
          'fc': {'kernel': jnp.full((4, 3), 0.5), 'bias': jnp.full((3,), 5.)}}


def _update(optimizer, grads_scale=0., **fields):
  c = tiny_config(optimizer=optimizer, learning_rate=0.1, weight_decay=0.1,
                  nesterov=False, **fields)
  tx = optim.make_optimizer(c, lambda _: 0.1)
  grads = jax.tree.map(lambda p: jnp.full_like(p, grads_scale), PARAMS)
  updates, _ = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
  return jax.tree.map(np.asarray, updates)


@pytest.mark.parametrize('optimizer', ['sgd', 'adamw', 'lamb', 'lars'])
def test_weight_decay_reaches_kernels_only(optimizer):
  updates = _update(optimizer)  # Zero gradients: only weight decay moves.
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    name = ckpt_lib._path_name(path)  # pylint: disable=protected-access
    assert np.any(u != 0) == name.endswith('kernel'), name
  everything = _update(optimizer, wd_exclude_bias_norm=False)
  assert all(np.all(u != 0) for u in jax.tree.leaves(everything))


def test_lamb_and_lars_adapt_only_decayed_leaves():
  lamb = _update('lamb')
  # Zero gradients: Adam's step is 0, the update is lr x the trust-scaled
  # decay, whose norm is lr x ||p||: -lr p.
  np.testing.assert_allclose(lamb['conv']['kernel'], -0.1 * 0.5, rtol=1e-5)
  lars = _update('lars')
  np.testing.assert_allclose(lars['conv']['kernel'], -0.1 * 0.001 * 0.5,
                             rtol=1e-5)
  # A bias takes a plain step (no trust ratio ||p|| / ||step||, here 5).
  lamb = _update('lamb', grads_scale=1.)
  np.testing.assert_allclose(lamb['fc']['bias'], -0.1, rtol=1e-4)
  lars = _update('lars', grads_scale=1.)
  np.testing.assert_allclose(lars['fc']['bias'], -0.1, rtol=1e-5)


def test_bad_recipe_values_are_config_errors():
  cases = {'mixup_alpha': -1., 'mixup_prob': 2., 'loss': 'focal',
           'ema_decay': 1., 'grad_accum_steps': 0, 'bce_target_thresh': 0.2}
  for field, value in cases.items():
    with pytest.raises(config_checks.ConfigError, match=field):
      config_checks.check_config(tiny_config(**{field: value}))
  with pytest.raises(config_checks.ConfigError, match='eval_use_ema'):
    config_checks.check_config(tiny_config(eval_use_ema=True))
  with pytest.raises(config_checks.ConfigError, match='grad_accum_steps x'):
    config_checks.check_config(tiny_config(grad_accum_steps=3))


# --- Whole runs: resume, devices, EMA in eval / predict / export ---------------

def test_recipe_resumes_bitwise_and_ema_is_evaluated(tmp_path):
  recipe = dict(RECIPE, **AUGMENT, data_dir=helpers.make_class_folder(
      tmp_path / 'images', per_class=11))
  config = tiny_config(**recipe)
  workdir = str(tmp_path / 'run')
  metrics = runner.run(config, workdir)
  assert {'eval_top1', 'eval_ema_top1', 'eval_ema_loss'} <= set(metrics)
  final = helpers.load_state(workdir, 4)
  assert set(final) >= {'ema_params', 'ema_batch_stats'}

  # Killed after checkpoint 2 was written: the same command continues.
  helpers.keep_checkpoints_up_to(workdir, 2)
  os.remove(os.path.join(workdir, 'metrics.json'))
  again = runner.run(config, workdir)
  helpers.assert_trees_equal(helpers.load_state(workdir, 4), final)
  assert again == metrics

  # --mode=eval picks the weights; predict and export read the EMA ones.
  ema_eval = runner.run(tiny_config(**recipe, eval_use_ema=True), workdir,
                        mode='eval')
  assert ema_eval['eval_top1'] == pytest.approx(metrics['eval_ema_top1'])
  assert ema_eval['eval_loss'] == pytest.approx(metrics['eval_ema_loss'],
                                                rel=1e-5)
  loaded = inference.load_for_inference(config, workdir=workdir, ema=True)
  helpers.assert_trees_equal(loaded.variables, {
      'params': final['ema_params'], 'batch_stats': final['ema_batch_stats']})
  exported = export_loader.load_trained(workdir, ema=True)
  helpers.assert_trees_equal(exported.variables, loaded.variables)


def test_checkpoints_from_before_ema_restore_and_ema_is_part_of_identity(
    tmp_path):
  """A run without EMA restores checkpoints written by the TrainState of
  older jaxres (no EMA fields); switching EMA on mid-run is refused."""

  class OldTrainState(flax_train_state.TrainState):
    batch_stats: Any

  tx = optax.sgd(0.1, momentum=0.9)
  fields = dict(apply_fn=None, params=PARAMS, tx=tx,
                batch_stats={'bn': {'mean': jnp.zeros(4)}})
  old = OldTrainState.create(**fields).replace(step=jnp.int32(7))
  manager = ckpt_lib.make_manager(tmp_path, max_to_keep=None, async_save=False)
  ckpt_lib.save(manager, 7, old, {'model': 'm'}, force=True)
  new = jax.eval_shape(lambda: train_state.TrainState.create(**fields))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = ckpt_lib.abstract_like(new, jax.tree.map(lambda _: device, new))
  restored, step = ckpt_lib.restore_latest(manager, abstract, {'model': 'm'})
  assert step == 7 and not restored.has_ema
  helpers.assert_trees_equal(restored.params, PARAMS)
  off, on = tiny_config(), tiny_config(ema_decay=0.9)
  assert ckpt_lib.meta_mismatches(ckpt_lib.experiment_meta(off),
                                  ckpt_lib.experiment_meta(on)) == [
                                      'ema: checkpoint has None, config has True']


def test_recipe_on_eight_devices_matches_one_device():
  config = tiny_config(**RECIPE)

  def run(dp, num_steps=2):
    model = train_state.build_model(config, 10)
    tx = optim.make_optimizer(config, lambda _: 0.1)
    state = jax.jit(functools.partial(
        train_state.create_train_state, model, tx, input_shape=(32, 32, 3),
        ema=True), out_shardings=dp.replicated)(jax.random.key(0))
    cfg = classification.StepConfig.from_config(config, 10, ema_warmup_steps=1)
    step = jax.jit(functools.partial(classification.train_step, cfg=cfg,
                                     lr_fn=lambda s: 0.1),
                   in_shardings=(dp.replicated, dp.batch, dp.replicated),
                   out_shardings=(dp.replicated, dp.replicated))
    rng = np.random.default_rng(0)
    for _ in range(num_steps):
      batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
               'label': rng.integers(0, 10, size=(16,)).astype(np.int32)}
      state, metrics = step(state, dp.shard_batch(batch), jax.random.key(1))
    return state, metrics

  state8, m8 = run(DataParallel.create(16))
  state1, m1 = run(DataParallel.create(16, devices=jax.devices()[:1]))
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  helpers.assert_trees_close(
      (state8.params, state8.batch_stats, state8.ema_params),
      (state1.params, state1.batch_stats, state1.ema_params))
