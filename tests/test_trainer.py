"""The shared loop: start-up order, what a run writes and when, both tasks.

Each test here failed on the two-trainer layout (train.py + train_seg.py).
"""
import json
import os
import shutil

import ml_collections
import pytest

from configs import seg_quickstart
from jaxres import runner
from tests import helpers


def _seg_config(**overrides):
  """A tiny UNet-VGG16 on the embedded shapes_seg data (seconds per run)."""
  c = seg_quickstart.get_config()
  c.unlock()
  c.model = 'unet_vgg16'
  c.model_kwargs = ml_collections.ConfigDict(
      {'backbone_width': 4, 'decoder_filters': (8, 8, 8, 8),
       'align_corners': True})
  c.num_classes = 2
  c.image_size = 32
  c.crop_size = 32
  c.shapes_train_size = 64
  c.shapes_eval_size = 16
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_train_epochs = None
  c.num_train_steps = 4
  c.warmup_epochs = None
  c.log_every_steps = 1
  c.eval_every_steps = 4
  c.checkpoint_every_steps = 2
  c.label_check_files = 8
  c.num_eval_images = 1
  c.compilation_cache_dir = helpers.xla_cache_dir()
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


@pytest.fixture(scope='module')
def seg_run(tmp_path_factory):
  """A finished run of _seg_config() (4 steps, checkpoints 2 and 4); the
  tests below work on copies of it."""
  workdir = tmp_path_factory.mktemp('seg_run')
  runner.run(_seg_config(), str(workdir))
  return workdir


def _copy(run, dest) -> str:
  shutil.copytree(run, dest)
  return str(dest)


def test_segmentation_eval_ignores_init_from_of_a_finished_run(tmp_path,
                                                               seg_run):
  # init_from applies to a new run only: a run whose init file has since
  # moved still evaluates and resumes (the old segmentation trainer loaded
  # init_from first, even in --mode=eval).
  source = _copy(seg_run, tmp_path / 'source')  # A finished run.
  config = _seg_config(init_from=source)
  run = str(tmp_path / 'run')
  first = runner.run(config, run)
  os.rename(source, str(tmp_path / 'moved'))
  again = runner.run(config, run, mode='eval')
  assert again['eval_miou'] == pytest.approx(first['eval_miou'])
  runner.run(_seg_config(init_from=source, num_train_steps=6), run)
  assert helpers.checkpoint_steps(run)[-1] == 6


def test_segmentation_sets_aside_an_unreadable_checkpoint(tmp_path, capsys,
                                                          seg_run):
  # As classification does: report, keep it under a new name, fall back to the
  # previous step and write the bad step again (the old segmentation trainer
  # died with StepAlreadyExistsError on every retry).
  workdir = _copy(seg_run, tmp_path / 'run')  # Finished: checkpoints 2, 4.
  helpers.truncate_checkpoint(workdir, 4)
  runner.run(_seg_config(num_train_steps=6), workdir)
  assert helpers.checkpoint_steps(workdir) == [2, 4, 6]
  assert [n for n in os.listdir(os.path.join(workdir, 'checkpoints'))
          if n.startswith('4.unreadable')]


def test_a_refused_run_leaves_the_workdir_as_it_found_it(tmp_path, capsys):
  workdir = tmp_path / 'w'
  with pytest.raises(SystemExit) as e:
    runner.run(_seg_config(init_from=str(tmp_path / 'missing')), str(workdir))
  assert e.value.code == 2
  assert not workdir.exists()
  # A workdir that holds another run's files keeps exactly those files.
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine')
  with pytest.raises(SystemExit):
    runner.run(_seg_config(dataset='voc', data_dir=str(tmp_path / 'none')),
               str(workdir))
  assert sorted(os.listdir(workdir)) == ['notes.txt']
  assert 'error:' in capsys.readouterr().err


def test_eval_writes_its_own_events_and_a_finished_run_says_so(tmp_path,
                                                             tiny_run):
  # The tiny config's 8-step run (tests/conftest.py), in a copy of our own.
  workdir = tiny_run.copy(tmp_path / 'run')
  proc = tiny_run
  assert 'TensorBoard' in proc.stderr and 'checkpoints' in proc.stderr
  train_events = sorted(os.listdir(workdir))
  for name in ('experiment.json', 'dataset.json', 'config.json',
               'parameters.txt', 'metrics.json'):
    assert name in train_events, train_events
  info = json.loads(open(os.path.join(workdir, 'dataset.json')).read())
  assert info['task'] == 'classification' and info['num_classes'] == 10
  assert len(info['class_names']) == 10
  # Metric lines are logged once each (not again by a logging writer).
  assert proc.stderr.count('step 8/8') == 1, proc.stderr[-2000:]

  # --mode=eval: events under eval/, the training events untouched.
  helpers.run_main(workdir, '--mode=eval')
  assert sorted(os.listdir(workdir)) == sorted(train_events + ['eval'])
  assert os.listdir(os.path.join(workdir, 'eval'))
  # A failed eval (no such step) writes nothing.
  before = sorted(os.listdir(os.path.join(workdir, 'eval')))
  proc = helpers.run_main(workdir, '--mode=eval', '--step=100', check=False)
  assert proc.returncode == 2 and 'step 100' in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, 'eval'))) == before

  # Re-running the finished run: no training, the final metrics, exit 0.
  proc = helpers.run_main(workdir)
  assert 'is complete' in proc.stderr and 'eval_top1' in proc.stderr
  assert 'Training' not in proc.stderr
