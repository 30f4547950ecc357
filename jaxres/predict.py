r"""Segment images with a trained checkpoint; write colour masks and overlays.

  python -m jaxres.predict --config=configs/seg_quickstart.py \
      --workdir=/tmp/seg_quickstart --input=photo.jpg --output=/tmp/pred
  python -m jaxres.predict --config=... --checkpoint=RUN/checkpoints/400 \
      --input=folder/ --output=/tmp/pred --overwrite

For every input image `a/b.jpg` this writes, at the image's original size,
`a/b_mask.png` (a palette PNG: it shows the VOC colours and reading it with
PIL gives the class indices) and `a/b_overlay.png` (the colours blended over
the image). Images are preprocessed as in evaluation: resized to
config.eval_size if that is set, else run at full resolution.

A missing or unreadable checkpoint, or one written for another model or class
count, is an error: prediction never runs on random weights.
"""
import functools
import json
import logging
import os
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks
from jaxres import train_seg
from jaxres import visualize
from jaxres.sharding import DataParallel

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


class PredictError(RuntimeError):
  """Bad input, output or checkpoint arguments."""


def _checkpoint_location(workdir: Optional[str], checkpoint: Optional[str]):
  """(checkpoints directory, step or None, workdir) from the two flags."""
  if bool(workdir) == bool(checkpoint):
    raise PredictError('Give exactly one of --workdir (latest checkpoint of a '
                       'run) and --checkpoint (DIR/checkpoints/STEP).')
  if workdir:
    return os.path.join(workdir, 'checkpoints'), None, workdir
  checkpoint = os.path.normpath(checkpoint)
  step = os.path.basename(checkpoint)
  if not step.isdigit():
    raise PredictError(
        f'--checkpoint={checkpoint} must name a step directory such as '
        'RUN/checkpoints/1000 (or use --workdir=RUN for the latest step).')
  directory = os.path.dirname(checkpoint)
  run_dir = os.path.dirname(directory) if os.path.basename(
      directory) == 'checkpoints' else directory
  return directory, int(step), run_dir


def _num_classes(config, run_dir: str) -> int:
  """From the run's segmentation.json, checked against config.num_classes."""
  path = os.path.join(run_dir, train_seg.DATASET_INFO_FILE)
  saved = None
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)['num_classes']
  configured = config.get('num_classes')
  if saved is not None and configured is not None and saved != configured:
    raise ckpt_lib.CheckpointError(
        f'The run in {run_dir} was trained with {saved} classes, but '
        f'config.num_classes={configured}.')
  if saved is None and configured is None:
    raise PredictError(
        f'Cannot tell the number of classes: {path} is missing and '
        'config.num_classes is not set. Pass --config.num_classes=N.')
  return saved if saved is not None else configured


def restore_for_inference(config, checkpoints_dir: str, step: Optional[int],
                          num_classes: int, dp: DataParallel):
  """Restores (model, state) from a checkpoint; raises CheckpointError."""
  if not os.path.isdir(checkpoints_dir):
    raise ckpt_lib.CheckpointError(
        f'No checkpoint directory {checkpoints_dir}. Point --workdir at a '
        'training run (prediction never uses random weights).')
  model = train_seg.build_model(config, num_classes)
  crop = train_seg._hw(config.get('crop_size', 512))  # pylint: disable=protected-access
  lr_fn = lambda count: 0.0
  abstract = jax.eval_shape(
      functools.partial(train_seg.build_state, config, model, (*crop, 3), 0,
                        lr_fn), jax.random.key(0))
  abstract = ckpt_lib.abstract_like(
      abstract, jax.tree.map(lambda _: dp.replicated, abstract))
  manager = ckpt_lib.make_manager(checkpoints_dir, max_to_keep=None,
                                  read_only=True)
  try:
    state, restored_step = ckpt_lib.restore_latest(
        manager, abstract, ckpt_lib.experiment_meta(config), step=step)
  finally:
    manager.close()
  if state is None:
    raise ckpt_lib.CheckpointError(
        f'No checkpoint in {checkpoints_dir}: nothing to predict with '
        '(prediction never uses random weights).')
  logging.info('Restored step %d from %s.', restored_step, checkpoints_dir)
  return model, state


def find_images(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise PredictError(f'--input={path} is neither an image file nor a folder.')
  found = []
  for root, _, files in os.walk(path):
    found += [os.path.join(root, f) for f in files
              if f.lower().endswith(IMAGE_EXTENSIONS)]
  if not found:
    raise PredictError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {path}.')
  return sorted(found)


def check_output_dir(output: str, overwrite: bool):
  if os.path.isdir(output) and os.listdir(output) and not overwrite:
    raise PredictError(f'--output={output} exists and is not empty; pass '
                       '--overwrite to write into it anyway.')
  if os.path.exists(output) and not os.path.isdir(output):
    raise PredictError(f'--output={output} is a file, not a folder.')


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _forward(state, image, label_hw, *, out_shape):
  """Class map [out_shape] of one preprocessed image; the image's own
  (label_hw) part is its prediction at its original size."""
  logits = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      image, train=False)
  logits = train_seg.resize_to_labels(logits, label_hw, out_shape)
  return jnp.argmax(logits, axis=-1).astype(jnp.uint8)


def predict(config, *, inputs: str, output: str, workdir: Optional[str] = None,
            checkpoint: Optional[str] = None, overwrite: bool = False,
            alpha: float = 0.5) -> list[str]:
  """Writes mask and overlay PNGs for every image; returns the written paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxres.data import segmentation as seg_data  # pylint: disable=g-import-not-at-top
  config_checks.check_config(config)
  checkpoints_dir, step, run_dir = _checkpoint_location(workdir, checkpoint)
  images = find_images(inputs)
  check_output_dir(output, overwrite)
  num_classes = _num_classes(config, run_dir)
  dp = DataParallel.create(1, devices=jax.devices()[:1])
  _, state = restore_for_inference(config, checkpoints_dir, step, num_classes,
                                   dp)
  os.makedirs(output, exist_ok=True)

  eval_size = config.get('eval_size')
  eval_size = None if eval_size is None else train_seg._hw(eval_size)  # pylint: disable=protected-access
  multiple = config.get('eval_pad_multiple', 32)
  forward = jax.jit(_forward, static_argnames='out_shape')
  root = inputs if os.path.isdir(inputs) else os.path.dirname(inputs)
  written = []
  for path in images:
    try:
      with Image.open(path) as img:
        rgb = np.asarray(img.convert('RGB'))
    except OSError as e:
      raise PredictError(f'Cannot read image {path}: {e}') from e
    h, w = rgb.shape[:2]
    # Padded sizes bound the number of compilations for folders of mixed sizes.
    out_shape = (_round_up(h, multiple), _round_up(w, multiple))
    in_shape = eval_size or out_shape
    x = np.zeros((1, *in_shape, 3), np.float32)
    dummy = np.zeros((1, *out_shape), np.int32)
    seg_data.eval_transform(rgb, np.zeros((h, w), np.uint8), eval_size, x[0],
                            dummy[0])
    # Resized input: scale the logits to (h, w). Full resolution: the image
    # already sits top-left in the padded input, so the scale is 1.
    hw = (h, w) if eval_size else out_shape
    mask = np.asarray(forward(state, x, np.asarray([hw], np.int32),
                              out_shape=out_shape))[0, :h, :w]
    stem = os.path.splitext(os.path.relpath(path, root))[0]
    mask_path = os.path.join(output, stem + '_mask.png')
    overlay_path = os.path.join(output, stem + '_overlay.png')
    os.makedirs(os.path.dirname(mask_path), exist_ok=True)
    visualize.save_mask_png(mask_path, mask)
    visualize.save_rgb_png(overlay_path, visualize.overlay(rgb, mask, alpha))
    written += [mask_path, overlay_path]
    logging.info('%s -> %s, %s (classes present: %s)', path, mask_path,
                 overlay_path, np.unique(mask).tolist())
  return written


FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string('workdir', None, 'Training run: use its latest checkpoint.')
  flags.DEFINE_string('checkpoint', None, 'A step directory, RUN/checkpoints/STEP.')
  flags.DEFINE_string('input', None, 'An image file or a folder of images.')
  flags.DEFINE_string('output', None, 'Folder for the mask and overlay PNGs.')
  flags.DEFINE_bool('overwrite', False, 'Allow writing into a non-empty --output.')
  flags.DEFINE_float('alpha', 0.5, 'Opacity of the colours in the overlays.')
  config_flags.DEFINE_config_file('config', None, 'The training config file.',
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'input', 'output'])


def main(argv: Sequence[str]):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    written = predict(FLAGS.config, inputs=FLAGS.input, output=FLAGS.output,
                      workdir=FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                      overwrite=FLAGS.overwrite, alpha=FLAGS.alpha)
  except (PredictError, ckpt_lib.CheckpointError,
          config_checks.ConfigError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'Wrote {len(written)} files to {FLAGS.output}.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
