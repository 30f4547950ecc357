"""Running `python -m jaxres.main` in subprocesses, and reading checkpoints."""
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny quickstart run (ResNet-10, width 8, 32x32 images).
TINY = ('--config=tests/tiny_config.py',)


def xla_cache_dir() -> str:
  """The tests' shared persistent XLA cache (see conftest.py); '' is off."""
  return os.environ.get('JAXRES_TEST_XLA_CACHE', '')


NO_TENSORFLOW = os.path.join(ROOT, 'tests', 'no_tensorflow')


def env(devices: int = 1, without_tensorflow: bool = False,
        fast_compile: bool = True):
  """A subprocess's environment; `without_tensorflow`: importing it fails."""
  e = dict(os.environ)
  # Tiny models and few steps: XLA's backend optimisations cost more compile
  # time than they save at run time. Not for a run of many steps
  # (fast_compile=False): the quickstart test's 90 steps took 1.5x the CPU
  # time at level 0 (134 against 89 s).
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}' + (
      ' --xla_backend_optimization_level=0' if fast_compile else '')
  e['TF_CPP_MIN_LOG_LEVEL'] = '2'
  e['PYTHONPATH'] = (NO_TENSORFLOW + os.pathsep + ROOT if without_tensorflow
                     else ROOT)
  e['JAX_PLATFORMS'] = 'cpu'
  return e


def main_cmd(workdir, *extra, base=TINY):
  return [sys.executable, '-m', 'jaxres.main', f'--workdir={workdir}',
          *base, *extra]


def run_main(workdir, *extra, devices=1, check=True, timeout=300, base=TINY,
             without_tensorflow=False, fast_compile=True):
  proc = subprocess.run(main_cmd(workdir, *extra, base=base), cwd=ROOT,
                        env=env(devices, without_tensorflow, fast_compile),
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'main failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  return proc


def load_state(workdir, step):
  """The saved TrainState of `step` as a dict of numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step), 'state')
  import jax  # pylint: disable=g-import-not-at-top
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(path)
    tree = getattr(metadata, 'item_metadata', metadata)
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
        tree, is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
    return ckptr.restore(path, target)


def assert_trees_equal(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def checkpoint_steps(workdir):
  """The step numbers of a run's committed checkpoints, sorted."""
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                if s.isdigit())


def truncate_checkpoint(workdir, step):
  """Truncates every data file of a checkpoint's state (a damaged disk)."""
  state_dir = os.path.join(workdir, 'checkpoints', str(step), 'state')
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != '_CHECKPOINT_METADATA':
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(3)


def keep_checkpoints_up_to(workdir, step):
  """Removes the checkpoints after `step`: as if the run had been preempted
  just after saving `step`."""
  import shutil  # pylint: disable=g-import-not-at-top
  for later in checkpoint_steps(workdir):
    if later > step:
      shutil.rmtree(os.path.join(workdir, 'checkpoints', str(later)))


def assert_trees_close(a, b, rtol=1e-4, atol=1e-5):
  """Equal up to float reduction order (another device or process count)."""
  import jax  # pylint: disable=g-import-not-at-top
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


def make_class_folder(root, per_class=4, val_per_class=1, classes=('a', 'b', 'c')):
  """An image-folder dataset (root/<split>/<class>/*.jpg) of random JPEGs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in (('train', per_class), ('val', val_per_class)):
    for c in classes:
      os.makedirs(os.path.join(root, split, c))
      for i in range(n):
        h, w = (int(s) for s in rng.integers(20, 48, size=2))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(
            os.path.join(root, split, c, f'{i}.jpg'), quality=90)
  return str(root)


def save_random_checkpoint(run, config, num_classes: int, step: int, hw=(32, 32)):
  """A checkpoint of config's model as the trainer writes it, with weights
  drawn in numpy (nothing compiled): BatchNorm variances 1, the rest small
  normal values."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxres import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from jaxres import inference, train_state  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  abstract = inference.abstract_variables(
      train_state.build_model(config, num_classes), (*hw, 3))
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, s.dtype) if 'var' in str(path[-1])
                       else 0.1 * rng.standard_normal(s.shape).astype(s.dtype)),
      abstract)
  manager = ckpt_lib.make_manager(os.path.join(str(run), 'checkpoints'),
                                  max_to_keep=None, async_save=False)
  ckpt_lib.save(manager, step, {'step': step, 'opt_state': {}, **variables},
                ckpt_lib.experiment_meta(config), force=True)
  manager.close()


def tiny_seg_config(**overrides):
  """The segmentation quickstart at a tiny width, 3 classes, 32x32 crops."""
  from configs import seg_quickstart  # pylint: disable=g-import-not-at-top
  c = seg_quickstart.get_config()
  with c.unlocked():
    c.model_kwargs.backbone_width = 4
    c.model_kwargs.decoder_filters = (8, 8, 8, 8)
    c.num_classes = 3
    c.crop_size = 32
    for k, v in overrides.items():
      setattr(c, k, v)
  return c
