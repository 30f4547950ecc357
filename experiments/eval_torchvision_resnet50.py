r"""Evaluates torchvision's ImageNet ResNet-50 weights after import into jaxres.

    python experiments/eval_torchvision_resnet50.py \
        --weights=resnet50-0676ba61.pth --imagenet_dir=/data/imagenet/val

Expected: top-1 76.13, top-5 92.86 (torchvision ResNet50_Weights.IMAGENET1K_V1,
resnet50-0676ba61.pth; the V2 weights resnet50-11ad3fa6.pth give 80.86 / 95.43
but were evaluated with a 232 resize: pass --resize_size=232). About 2-4 minutes on
one GPU with 16 CPU cores (JPEG decoding is the bottleneck); use --limit for a
quick look.

Data, either:
  --imagenet_dir: ILSVRC2012 validation JPEGs in one folder per class (the
    torchvision ImageFolder layout, folders named by WordNet id, e.g.
    n01440764/ILSVRC2012_val_00000293.JPEG); labels are the sorted folder
    names, which is the class order of the torchvision weights.
  --tfds_data_dir: a prepared TFDS imagenet2012; its labels are the same
    sorted WordNet ids.

Preprocessing is torchvision's eval transform, reproduced with PIL:
Resize(256) (shorter side to 256, longer side int(256 * long / short), PIL
bilinear, which antialiases when shrinking), CenterCrop(224) (offsets
int(round((size - 224) / 2))), scale to [0, 1], normalise with the ImageNet
mean/std. It is applied to the JPEG bytes in both modes. jaxres's own TFDS
eval pipeline (jaxres.data.imagenet) crops the centre 224/256 of the shorter
side first and resizes that with TF bicubic, without antialiasing; select it
with --preprocess=jaxres to measure the difference (typically a few tenths of
a point of top-1 for weights trained with the torchvision recipe).
"""
import argparse
import io
import multiprocessing
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxres import convert  # pylint: disable=g-import-not-at-top,wrong-import-position

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
EXPECTED_TOP1 = 76.13
EXPECTED_TOP5 = 92.862
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')


def torchvision_eval_transform(image_bytes: bytes, resize_size: int = 256,
                               crop_size: int = 224) -> np.ndarray:
  """transforms.Resize(resize_size), CenterCrop(crop_size), ToTensor, Normalize (HWC)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(image_bytes)) as img:
    img = img.convert('RGB')
    w, h = img.size
    if w <= h:
      new_w, new_h = resize_size, int(resize_size * h / w)
    else:
      new_w, new_h = int(resize_size * w / h), resize_size
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    img = img.crop((left, top, left + crop_size, top + crop_size))
    x = np.asarray(img, np.float32) / 255.0
  return (x - MEAN) / STD


def _load_file(args):
  path, label, resize_size = args
  with open(path, 'rb') as f:
    return torchvision_eval_transform(f.read(), resize_size), label


def _load_bytes(args):
  image_bytes, label, resize_size = args
  return torchvision_eval_transform(image_bytes, resize_size), label


def image_folder(root: str):
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise SystemExit(
        f'{root} has no class folders. Expected the ImageFolder layout '
        '(one folder per WordNet id holding its validation JPEGs).')
  if len(classes) != 1000:
    print(f'warning: {len(classes)} class folders, not 1000: labels are the '
          'positions of the sorted folder names and only match the torchvision '
          'classes for the full set.')
  samples = []
  for label, c in enumerate(classes):
    for name in sorted(os.listdir(os.path.join(root, c))):
      if name.lower().endswith(IMAGE_EXTENSIONS):
        samples.append((os.path.join(root, c, name), label))
  return samples


def tfds_examples(data_dir: str, name: str, split: str):
  """(jpeg bytes, label) pairs of a prepared TFDS ImageNet split."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  for ex in tfds.as_numpy(ds):
    yield ex['image'], int(ex['label'])


def batches(items, loader, batch_size, workers):
  """Yields (images [B,224,224,3], labels [B], count) with the last batch padded."""
  # spawn: forking a process that already runs JAX threads can deadlock.
  with multiprocessing.get_context('spawn').Pool(workers) as pool:
    images, labels = [], []
    for x, y in pool.imap(loader, items, chunksize=16):
      images.append(x)
      labels.append(y)
      if len(images) == batch_size:
        yield np.stack(images), np.array(labels), batch_size
        images, labels = [], []
    if images:
      n = len(images)
      images += [np.zeros_like(images[0])] * (batch_size - n)
      labels += [0] * (batch_size - n)
      yield np.stack(images), np.array(labels), n


def jaxres_pipeline_batches(data_dir, name, split, batch_size):
  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top
  builder = imagenet.get_builder(name, data_dir)
  for batch in imagenet.eval_iterator(builder, batch_size, split=split):
    yield batch['image'], batch['label'], int(batch['mask'].sum())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--weights', required=True,
                      help='torchvision resnet50 state dict (.pth/.safetensors)')
  parser.add_argument('--imagenet_dir', help='ImageFolder-style val directory')
  parser.add_argument('--tfds_data_dir', help='TFDS data dir with imagenet2012')
  parser.add_argument('--tfds_name', default='imagenet2012')
  parser.add_argument('--split', default='validation')
  parser.add_argument('--preprocess', choices=('torchvision', 'jaxres'),
                      default='torchvision')
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--resize_size', type=int, default=256)
  parser.add_argument('--batch_size', type=int, default=250)
  parser.add_argument('--limit', type=int, default=0,
                      help='evaluate only the first N images (0: all)')
  parser.add_argument('--workers', type=int, default=os.cpu_count())
  args = parser.parse_args(argv)
  if bool(args.imagenet_dir) == bool(args.tfds_data_dir):
    parser.error('give exactly one of --imagenet_dir and --tfds_data_dir')
  if args.preprocess == 'jaxres' and not args.tfds_data_dir:
    parser.error('--preprocess=jaxres needs --tfds_data_dir')

  import jax  # pylint: disable=g-import-not-at-top

  try:
    state, notes = convert.read_state_dict(args.weights)
    model, shapes = convert.model_variables_shape(args.model, num_classes=1000)
    variables, report = convert.convert_state_dict(state, shapes)
  except convert.ConvertError as e:
    raise SystemExit(f'error: {e}') from e
  for note in notes:
    print(f'note: {note}')
  print(report.summary())
  variables = jax.device_put(variables)

  @jax.jit
  def predict(variables, images):
    logits = model.apply(variables, images, train=False)
    return jax.lax.top_k(logits, 5)[1]

  if args.preprocess == 'jaxres':
    stream = jaxres_pipeline_batches(args.tfds_data_dir, args.tfds_name,
                                     args.split, args.batch_size)
  else:
    if args.imagenet_dir:
      items = [(p, y, args.resize_size) for p, y in image_folder(args.imagenet_dir)]
      loader = _load_file
      if args.limit:
        items = items[:args.limit]
    else:
      def gen():
        for i, (b, y) in enumerate(tfds_examples(
            args.tfds_data_dir, args.tfds_name, args.split)):
          if args.limit and i >= args.limit:
            return
          yield b, y, args.resize_size
      items, loader = gen(), _load_bytes
    stream = batches(items, loader, args.batch_size, args.workers)

  seen = top1 = top5 = 0
  start = time.time()
  for images, labels, n in stream:
    if args.limit and seen >= args.limit:
      break
    n = min(n, args.limit - seen) if args.limit else n
    pred = np.asarray(predict(variables, images))[:n]
    labels = labels[:n]
    top1 += int((pred[:, 0] == labels).sum())
    top5 += int((pred == labels[:, None]).any(axis=1).sum())
    seen += n
    if seen % (20 * args.batch_size) < n:
      print(f'{seen} images: top-1 {100 * top1 / seen:.2f} '
            f'top-5 {100 * top5 / seen:.2f} ({time.time() - start:.0f}s)')
  if not seen:
    raise SystemExit('error: no images found.')
  print(f'{args.model} from {args.weights} on {seen} images '
        f'({args.preprocess} preprocessing): top-1 {100 * top1 / seen:.2f}% '
        f'top-5 {100 * top5 / seen:.2f}% (torchvision reports '
        f'{EXPECTED_TOP1} / {EXPECTED_TOP5} on all 50,000)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
