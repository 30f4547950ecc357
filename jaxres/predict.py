r"""Predict with a trained checkpoint: top-k classes, or segmentation masks.

  python -m jaxres.predict --config=configs/quickstart.py \
      --workdir=/tmp/quickstart --input=photo.jpg --output=/tmp/pred
  python -m jaxres.predict --config=configs/seg_quickstart.py \
      --checkpoint=RUN/checkpoints/400 --input=folder/ --output=/tmp/pred \
      --overwrite

(`jaxres-predict` once installed.) The run's task decides what is written:

- Classification: the `--top_k` classes with their names and probabilities,
  as a table on the console and in `predictions.csv` and `predictions.json`.
  Images are preprocessed as in evaluation: resized to config.image_size for
  the embedded `shapes` and `synthetic` data; for photographs (TFDS datasets,
  image folders) the centre of the shorter side, resized to image_size.
- Segmentation: for every input image `a/b.jpg`, at the image's original
  size, `a/b_mask.png` (a palette PNG: it shows the VOC colours and reading it
  with PIL gives the class indices) and `a/b_overlay.png` (the colours blended
  over the image). Images are resized to config.eval_size if that is set, else
  run at full resolution. The inference mode (config.inference, or
  --inference=slide --slide_crop=512 --slide_stride=341, and
  --inference_scales=0.75,1,1.25 --inference_flip) is evaluation's: see
  jaxres/seg_inference.py.

A missing checkpoint, or one written for another task, model or class count,
is an error, and so is a non-empty --output without --overwrite: each stops
with one message and exit status 2. Prediction never runs on random weights.
"""
import csv
import io
import json
from typing import Optional, Sequence

from absl import app
from absl import flags
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from jaxres import checkpoint as ckpt_lib
from jaxres import config_checks
from jaxres import inference
from jaxres import main as main_lib
from jaxres import predict_io
from jaxres import seg_inference
from jaxres.predict_io import PredictError, check_output_dir, find_images  # pylint: disable=unused-import
from jaxres.predict_seg import segment, with_inference_flags  # pylint: disable=unused-import

CLASSIFICATION_BATCH = 16  # One compilation for any number of images.
# Datasets whose eval images are already image_size: resize, no centre crop.
RESIZE_ONLY_DATASETS = ('shapes', 'synthetic')


# ---------------------------------------------------------------------------
# Classification.
# ---------------------------------------------------------------------------

def classification_input(path: epath.Path, config) -> np.ndarray:
  """uint8 [image_size, image_size, 3], preprocessed as evaluation does."""
  from jaxres.data import folder  # pylint: disable=g-import-not-at-top
  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top
  size = config.image_size
  dataset = config.get('dataset')
  crop_pct = config.get('eval_crop_pct')
  if dataset in RESIZE_ONLY_DATASETS:
    def window(h, w):  # The whole image.
      return (0, 0, w, h)
  elif dataset == 'folder':
    window = lambda h, w: folder.eval_window(h, w, size, crop_pct)
  else:  # TFDS (jaxres.data.imagenet): the centre crop_pct, size / (size + 32).
    def window(h, w):
      side = (crop_pct or imagenet.default_crop_pct(size)) * min(h, w)
      top, left = (h - side) / 2, (w - side) / 2
      return (left, top, left + side, top + side)
  try:
    return folder.decode(predict_io.read_bytes(path), window, size,
                         config.get('interpolation'))
  except folder.BadImageError as e:
    raise PredictError(f'Cannot read image {path}: {e}') from e


def _top_k(model: inference.InferenceModel, k: int):
  def fn(variables, images):
    logits = model.model.apply(variables, images, train=False)
    return jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32)), k)
  return jax.jit(fn)


def classify(model: inference.InferenceModel, config,
             images: Sequence[epath.Path], top_k: int = 5) -> list[dict]:
  """[{'image', 'top': [{'rank', 'index', 'class', 'probability'}]}]."""
  from jaxres import data as data_lib  # pylint: disable=g-import-not-at-top
  k = max(1, min(top_k, model.num_classes))
  fn = _top_k(model, k)
  results = []
  for start in range(0, len(images), CLASSIFICATION_BATCH):
    chunk = images[start:start + CLASSIFICATION_BATCH]
    batch = np.zeros((CLASSIFICATION_BATCH, config.image_size,
                      config.image_size, 3), np.float32)
    for i, path in enumerate(chunk):
      batch[i] = data_lib.normalize(classification_input(path, config))
    probs, indices = jax.device_get(fn(model.variables, batch))
    for i, path in enumerate(chunk):
      results.append({'image': str(path), 'top': [
          {'rank': r + 1, 'index': int(c), 'class': model.class_names[c],
           'probability': float(p)}
          for r, (c, p) in enumerate(zip(indices[i], probs[i]))]})
  return results


def format_table(results: list[dict], inputs: str) -> str:
  """One line per image: its top classes, most probable first."""
  names = [predict_io.relative_stem(epath.Path(r['image']), inputs) +
           epath.Path(r['image']).suffix for r in results]
  cells = [[f'{t["class"]} {t["probability"]:.1%}' for t in r['top']]
           for r in results]
  width = max([len('image')] + [len(n) for n in names])
  cell = max([len('top-1')] + [len(c) for row in cells for c in row])
  k = len(cells[0]) if cells else 0
  rows = [['image'] + [f'top-{i + 1}' for i in range(k)]]
  rows += [[n] + row for n, row in zip(names, cells)]
  return '\n'.join(
      '  '.join([f'{row[0]:<{width}}'] + [f'{c:<{cell}}' for c in row[1:]])
      .rstrip() for row in rows)


def _write_classification(results: list[dict], output: epath.Path):
  csv_path = output / 'predictions.csv'
  json_path = output / 'predictions.json'
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(['image', 'rank', 'class_index', 'class_name',
                   'probability'])
  for r in results:
    for t in r['top']:
      writer.writerow([r['image'], t['rank'], t['index'], t['class'],
                       f'{t["probability"]:.6f}'])
  csv_path.write_text(text.getvalue())
  json_path.write_text(json.dumps(results, indent=2))
  return [str(csv_path), str(json_path)]


# ---------------------------------------------------------------------------
# Both tasks (segmentation output: jaxres/predict_seg.py).
# ---------------------------------------------------------------------------

def predict(config, *, inputs: str, output: str, workdir: Optional[str] = None,
            checkpoint: Optional[str] = None, step: Optional[int] = None,
            overwrite: bool = False, alpha: float = 0.5, top_k: int = 5,
            show: bool = True, ema: bool = False) -> list[str]:
  """Predicts every image under `inputs`; returns the paths written.

  Everything the user gave is checked before the checkpoint is read.
  Classification results are also printed as a table when `show` is set.
  """
  config_checks.check_config(config)
  inference.checkpoint_location(workdir, checkpoint, step)
  images = find_images(inputs)
  check_output_dir(output, overwrite)
  if top_k < 1:
    raise PredictError(f'--top_k={top_k} must be at least 1.')
  model = inference.load_for_inference(config, workdir=workdir,
                                       checkpoint=checkpoint, step=step,
                                       ema=ema)
  out = epath.Path(output)
  out.mkdir(parents=True, exist_ok=True)
  if model.task == 'segmentation':
    return segment(model, config, images, inputs, out, alpha)
  results = classify(model, config, images, top_k)
  if show:
    print(format_table(results, inputs))
  return _write_classification(results, out)


FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string('workdir', None,
                      'Training run: use its latest checkpoint.')
  flags.DEFINE_string('checkpoint', None,
                      'A step directory, RUN/checkpoints/STEP.')
  flags.DEFINE_integer('step', None, 'With --workdir: the checkpoint step '
                       '(default latest).')
  flags.DEFINE_string('input', None, 'An image file or a folder of images.')
  flags.DEFINE_string('output', None, 'Folder for the predictions.')
  flags.DEFINE_bool('overwrite', False,
                    'Allow writing into a non-empty --output.')
  flags.DEFINE_bool('ema', False, 'Use the EMA weights of a run trained '
                    'with config.ema_decay > 0.')
  flags.DEFINE_integer('top_k', 5, 'Classification: classes listed per image.')
  flags.DEFINE_float('alpha', 0.5, 'Segmentation: opacity of the colours in '
                     'the overlays.')
  flags.DEFINE_enum('inference', None, list(seg_inference.MODES),
                    'Segmentation: whole image or sliding windows (default: '
                    'config.inference).')
  flags.DEFINE_string('slide_crop', None, 'Slide window, H or H,W (default: '
                      'config.slide_crop, else crop_size).')
  flags.DEFINE_string('slide_stride', None, 'Slide step, H or H,W (default: '
                      'config.slide_stride, else 2/3 of the crop).')
  flags.DEFINE_integer('slide_batch', None, 'Windows per step (default: '
                       'config.slide_batch).')
  flags.DEFINE_list('inference_scales', None, 'Test-time scales, e.g. '
                    '0.5,0.75,1,1.25,1.5,1.75 (default: config.'
                    'inference_scales).')
  flags.DEFINE_bool('inference_flip', None, 'Also average the left-right '
                    'mirrored image (default: config.inference_flip).')
  main_lib.define_common_flags('The config file the run was trained with.')
  flags.mark_flags_as_required(['config', 'input', 'output'])


def main(argv: Sequence[str]):
  if len(argv) > 1:
    main_lib.fail(f'unexpected arguments {argv[1:]}; flags are written '
                  '--name=value.')
  main_lib.quiet_libraries(FLAGS.verbose)
  try:
    config = with_inference_flags(
        FLAGS.config, inference_mode=FLAGS.inference,
        slide_crop=FLAGS.slide_crop, slide_stride=FLAGS.slide_stride,
        slide_batch=FLAGS.slide_batch, inference_scales=FLAGS.inference_scales,
        inference_flip=FLAGS.inference_flip)
    written = predict(config, inputs=FLAGS.input, output=FLAGS.output,
                      workdir=FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                      step=FLAGS.step, overwrite=FLAGS.overwrite,
                      alpha=FLAGS.alpha, top_k=FLAGS.top_k, ema=FLAGS.ema)
  except (PredictError, ckpt_lib.CheckpointError,
          config_checks.ConfigError) as e:
    main_lib.fail(str(e))
  print(f'Wrote {len(written)} files to {FLAGS.output}.')


def run():
  """`jaxres-predict` and `python -m jaxres.predict`."""
  _define_flags()
  app.run(main, flags_parser=main_lib.parse_flags)


if __name__ == '__main__':
  run()
