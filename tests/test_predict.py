"""Classification prediction end to end, and the refusals of jaxres.predict."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import helpers
from jaxres import checkpoint as ckpt_lib
from jaxres import inference
from jaxres import predict
from jaxres.data import folder
from jaxres.data import shapes
import tiny_config


@pytest.fixture(scope='module')
def run_dir(tiny_run):
  """A tiny classification run on `shapes` (8 steps, checkpoints 2..8).

  Trained once per test session (tests/conftest.py): pytest-xdist workers
  and other modules share it.
  """
  import pathlib  # pylint: disable=g-import-not-at-top
  return pathlib.Path(tiny_run.workdir)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """Four shapes images, one of them in a sub-folder and of another size."""
  root = tmp_path_factory.mktemp('inputs')
  pixels, labels = shapes.make_classification(4, 32, seed=5)
  (root / 'sub').mkdir()
  for i in range(3):
    Image.fromarray(pixels[i]).save(root / f'{i}.png')
  Image.fromarray(pixels[3]).resize((48, 40)).save(root / 'sub' / '3.jpg')
  return root, labels


def _predict_cmd(*args):
  return subprocess.run(
      [sys.executable, '-m', 'jaxres.predict', '--config=tests/tiny_config.py',
       *args], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
      text=True, timeout=120)


def test_restores_exactly_the_saved_variables(run_dir):
  model = inference.load_for_inference(tiny_config.get_config(),
                                       workdir=str(run_dir), step=6)
  assert (model.task, model.num_classes, model.step) == (
      'classification', 10, 6)
  assert model.class_names == shapes.CLASS_NAMES
  saved = helpers.load_state(run_dir, 6)
  helpers.assert_trees_equal(model.variables['params'], saved['params'])
  helpers.assert_trees_equal(model.variables['batch_stats'],
                             saved['batch_stats'])
  logits = model.apply(np.zeros((2, 32, 32, 3), np.float32))
  assert logits.shape == (2, 10)


def test_classification_command(run_dir, images, tmp_path):
  root, _ = images
  out = tmp_path / 'pred'
  proc = _predict_cmd(f'--workdir={run_dir}', f'--input={root}',
                      f'--output={out}', '--top_k=3')
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = proc.stdout.splitlines()
  assert table[0].split() == ['image', 'top-1', 'top-2', 'top-3']
  assert [line.split()[0] for line in table[1:5]] == [
      '0.png', '1.png', '2.png', 'sub/3.jpg']
  assert 'Orbax' not in proc.stderr and 'orbax' not in proc.stderr
  with open(out / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 * 3
  results = json.loads((out / 'predictions.json').read_text())
  for r in results:
    probs = [t['probability'] for t in r['top']]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
    assert all(t['class'] == shapes.CLASS_NAMES[t['index']] for t in r['top'])
  assert rows[0]['class_name'] == results[0]['top'][0]['class']


def test_dataset_json_names_the_classes(run_dir, images, tmp_path):
  """dataset.json (written by the trainer) wins over the fallbacks."""
  run = tmp_path / 'copy'
  run.mkdir()
  os.symlink(run_dir / 'checkpoints', run / 'checkpoints')
  names = [f'kind{i}' for i in range(10)]
  (run / 'dataset.json').write_text(json.dumps(
      {'task': 'classification', 'num_classes': 10, 'class_names': names,
       'image_shape': [32, 32, 3]}))
  config = tiny_config.get_config()
  written = predict.predict(config, inputs=str(images[0] / '0.png'),
                            output=str(tmp_path / 'out'), workdir=str(run),
                            top_k=20, show=False)
  result = json.loads(open(written[1]).read())[0]
  assert len(result['top']) == 10
  assert {t['class'] for t in result['top']} == set(names)

  (run / 'dataset.json').write_text(json.dumps(
      {'task': 'segmentation', 'num_classes': 10}))
  with pytest.raises(ckpt_lib.CheckpointError, match='trained a segmentation'):
    inference.load_for_inference(config, workdir=str(run))


def test_refusals_exit_2_with_one_message(run_dir, images, tmp_path):
  root, _ = images
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x.txt').write_text('x')
  for args, expected in [
      ((f'--workdir={run_dir}', f'--input={root}', f'--output={tmp_path}/full'),
       '--overwrite'),
      ((f'--workdir={run_dir}', f'--input={root}', f'--output={tmp_path}/o1',
        '--config.model_kwargs.width=16'), 'different experiment')]:
    proc = _predict_cmd(*args)
    assert proc.returncode == 2, (args, proc.stderr[-3000:])
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
    assert len(errors) == 1 and expected in proc.stderr, (args, proc.stderr)
    assert 'Traceback' not in proc.stderr
  config = tiny_config.get_config()
  for kwargs, error, expected in [
      (dict(workdir=f'{tmp_path}/no_run'), ckpt_lib.CheckpointError,
       'random weights'),
      (dict(checkpoint=f'{run_dir}/checkpoints/7'), ckpt_lib.CheckpointError,
       'step 7'),
      (dict(workdir=str(run_dir), checkpoint=f'{run_dir}/checkpoints/8'),
       ckpt_lib.CheckpointError, 'exactly one'),
      (dict(workdir=str(run_dir), inputs=f'{tmp_path}/none.png'),
       predict.PredictError, 'neither an image file nor a folder')]:
    kwargs = {'inputs': str(root), 'output': f'{tmp_path}/o2', **kwargs}
    with pytest.raises(error, match=expected):
      predict.predict(config, **kwargs)
  assert not (tmp_path / 'o1').exists() and not (tmp_path / 'o2').exists()


def test_photographs_are_centre_cropped_as_in_evaluation(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / 'photo.png'
  Image.fromarray(rng.integers(0, 255, (40, 64, 3), np.uint8)).save(path)
  config = tiny_config.get_config()
  from etils import epath  # pylint: disable=g-import-not-at-top
  resized = predict.classification_input(epath.Path(path), config)
  np.testing.assert_array_equal(
      resized, np.asarray(Image.open(path).resize((32, 32), Image.BILINEAR)))
  with config.unlocked():
    config.dataset = 'folder'
  np.testing.assert_array_equal(
      predict.classification_input(epath.Path(path), config),
      folder.load_eval(str(path), 32))


def test_segmentation_masks_at_each_images_size(tmp_path):
  """A segmentation checkpoint (fresh weights, saved as the trainer does)."""
  config = helpers.tiny_seg_config()
  run = tmp_path / 'run'
  # Weights drawn with numpy: no compilation for init.
  helpers.save_random_checkpoint(run, config, 3, step=3)
  # A run from before dataset.json: its segmentation.json names the classes.
  (run / 'segmentation.json').write_text(json.dumps(
      {'num_classes': 3, 'class_names': ['bg', 'a', 'b'], 'ignore_label': 255}))

  pixels, _ = shapes.make_segmentation(2, 32, 5, 3)
  inputs = tmp_path / 'inputs'
  (inputs / 'sub').mkdir(parents=True)
  Image.fromarray(pixels[0]).save(inputs / 'a.png')
  # Padded to 32x32 like a.png: one compilation.
  Image.fromarray(pixels[1]).resize((30, 21)).save(inputs / 'sub' / 'b.jpg')
  written = predict.predict(config, inputs=str(inputs),
                            output=str(tmp_path / 'pred'), workdir=str(run))
  assert sorted(os.path.relpath(p, tmp_path / 'pred') for p in written) == [
      'a_mask.png', 'a_overlay.png', 'sub/b_mask.png', 'sub/b_overlay.png']
  mask_b = Image.open(tmp_path / 'pred' / 'sub' / 'b_mask.png')
  assert mask_b.mode == 'P' and mask_b.size == (30, 21)
  assert set(np.unique(np.asarray(mask_b))) <= {0, 1, 2}
  restored = inference.load_for_inference(config, workdir=str(run))
  assert (restored.task, restored.class_names, restored.ignore_label) == (
      'segmentation', ('bg', 'a', 'b'), 255)
  with pytest.raises(ckpt_lib.CheckpointError, match='trained with 3 classes'):
    inference.load_for_inference(helpers.tiny_seg_config(num_classes=4), workdir=str(run))
  # A damaged array (here: its recorded checksum) is caught, never used.
  sums = run / 'checkpoints' / '3' / 'checksums' / 'metadata'
  table = json.loads(sums.read_text())
  table[next(k for k in table if 'params' in k)] = '00000000'
  sums.write_text(json.dumps(table))
  with pytest.raises(ckpt_lib.CheckpointError, match='checksum mismatch'):
    inference.load_for_inference(config, workdir=str(run))
