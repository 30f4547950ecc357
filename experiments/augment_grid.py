r"""A grid PNG of augmented training images: one row per example, one column
per augmentation policy, every column the same crop and flip.

The images go through the real training pipeline (jaxres.data.folder, which
runs jaxres.data.augment's TensorFlow ops), then are un-normalised. With a
'folder' config its data_dir is read; any other dataset is replaced by a
temporary image folder of the embedded generated 'shapes' images (drawn at
--source_size, so the random-resized crop has pixels to crop). No network.

Column names: 'none', 'randaugment', 'trivialaugment', 'autoaugment', or
one of them + '+erasing' (random erasing with the config's probability, or
always if that is 0, so that the column shows it). The config's
randaugment_n/m/mstd, interpolation and seed apply.

The committed figure (experiments/results/augment_grid.png):
  python experiments/augment_grid.py --config=configs/quickstart.py \
      --config.image_size=64 --out=experiments/results/augment_grid.png
"""
import os
import sys
import tempfile

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jaxres.data as data_lib
from jaxres.data import shapes
# pylint: enable=g-import-not-at-top,wrong-import-position

config_flags.DEFINE_config_file('config', None, 'A classification config.',
                                lock_config=False)
flags.DEFINE_string('out', 'augment_grid.png', 'PNG to write.')
flags.DEFINE_string(
    'columns', 'none,randaugment,trivialaugment,autoaugment,'
    'randaugment+erasing', 'Comma-separated policies, one per column.')
flags.DEFINE_integer('rows', 5, 'Examples (rows).')
flags.DEFINE_integer('step', 0, 'Training step whose first examples to show.')
flags.DEFINE_integer('source_size', 0,
                     "Generated 'shapes' side; 0: twice config.image_size.")
flags.DEFINE_integer('palette', 256,
                     'Quantise the PNG to this many colours (0: RGB).')
FLAGS = flags.FLAGS
HEADER = 14  # Pixels above the tiles for the column names.
PER_CLASS = 4


def write_shapes_folder(root: str, size: int) -> str:
  """train/ and val/ class folders of generated shapes PNGs."""
  images, labels = shapes.make_classification(
      PER_CLASS * shapes.NUM_CLASSES, image_size=size, seed=0)
  for split in ('train', 'val'):
    for name in shapes.CLASS_NAMES:  # Both splits hold every class folder.
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
      if split == 'val' and i >= shapes.NUM_CLASSES:
        break
      folder = os.path.join(root, split, shapes.CLASS_NAMES[label])
      Image.fromarray(image).save(os.path.join(folder, f'{i:04d}.png'))
  return root


def column_config(config, column: str):
  policy, _, extra = column.partition('+')
  if extra not in ('', 'erasing'):
    raise ValueError(f'Column {column!r}: the only suffix is "+erasing".')
  c = config.copy_and_resolve_references()
  c.augment = policy
  c.random_erasing = (config.random_erasing or 1.0) if extra else 0.0
  return c


def images_for(config, column: str, rows: int, step: int) -> np.ndarray:
  """uint8 [rows, S, S, 3]: the first rows of training step ``step``."""
  c = column_config(config, column)
  data = data_lib.get_classification_datasets(
      c, seed=c.seed, process_index=0, process_count=1)
  batch = next(data.train_iter_fn(step))
  pixels = (np.asarray(batch['image'], np.float32) *
            np.asarray(data_lib.STDDEV_RGB) + np.asarray(data_lib.MEAN_RGB))
  return np.uint8(np.clip(np.round(pixels), 0, 255))[:rows]


def grid(columns, tiles, size: int) -> Image.Image:
  rows = tiles[0].shape[0]
  canvas = Image.new('RGB', (len(columns) * (size + 2),
                             HEADER + rows * (size + 2)), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for j, (name, images) in enumerate(zip(columns, tiles)):
    label = name.replace('randaugment', 'RA').replace('augment', 'Aug')
    draw.text((j * (size + 2) + 2, 1), label.replace('trivial', 'Trivial')
              .replace('auto', 'Auto'), fill=(0, 0, 0))
    for i, image in enumerate(images):
      canvas.paste(Image.fromarray(image),
                   (j * (size + 2) + 1, HEADER + i * (size + 2) + 1))
  return canvas


def main(argv):
  del argv
  config = FLAGS.config
  columns = FLAGS.columns.split(',')
  with tempfile.TemporaryDirectory() as tmp:
    if config.dataset != 'folder':
      source = FLAGS.source_size or 2 * config.image_size
      print(f'dataset={config.dataset!r}: using generated shapes images '
            f'({source}x{source}) in an image folder.')
      config.dataset = 'folder'
      config.data_dir = write_shapes_folder(tmp, source)
      config.num_classes = None
    config.batch_size = config.eval_batch_size = FLAGS.rows
    config.prefetch_batches = 0
    tiles = [images_for(config, column, FLAGS.rows, FLAGS.step)
             for column in columns]
  image = grid(columns, tiles, config.image_size)
  if FLAGS.palette:
    image = image.quantize(FLAGS.palette, dither=Image.Dither.NONE)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  image.save(FLAGS.out, optimize=True)
  print(f'Wrote {FLAGS.out} ({os.path.getsize(FLAGS.out) / 1e3:.0f} kB, '
        f'{image.size[0]}x{image.size[1]}).')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
