"""Tests for jaxres/data/folder.py: classification from ImageFolder layouts."""
import logging
import os

import numpy as np
from PIL import Image
import pytest

from configs import common

import jaxres.data as data_lib
from jaxres.data import errors
from jaxres.data import folder
from jaxres.data import image_folder

CLASSES = ('cat', 'dog', 'emu')  # Drawn red, green and blue respectively.
IMAGE_SIZE = 16


def _make_folder(root, sizes=(('train', 4), ('val', 2)), seed=0):
  """Writes a 3-class folder of JPEGs and PNGs of various sizes."""
  rng = np.random.default_rng(seed)
  for split, per_class in sizes:
    for c, name in enumerate(CLASSES):
      os.makedirs(os.path.join(root, split, name))
      for i in range(per_class):
        h, w = (int(s) for s in rng.integers(10, 48, size=2))
        image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        image[..., c] += 180  # The class's channel dominates.
        ext = '.jpg' if i % 2 == 0 else '.PNG'
        Image.fromarray(image).save(
            os.path.join(root, split, name, f'{i:03d}{ext}'),
            format='JPEG' if ext == '.jpg' else 'PNG', quality=95)
  return str(root)


def _config(root, **overrides):
  config = common.classification_config()
  config.update(dict(dataset='folder', data_dir=root, image_size=IMAGE_SIZE,
                     batch_size=6, eval_batch_size=4, num_classes=None,
                     data_workers=2, on_bad_image='stop', prefetch_batches=1))
  for key, value in overrides.items():
    config[key] = value
  return config


def _datasets(config, process_index=0, process_count=1):
  return data_lib.get_classification_datasets(
      config, seed=3, process_index=process_index,
      process_count=process_count)


def _train(config, start_step=0, **kwargs):
  return _datasets(config, **kwargs).train_iter_fn(start_step)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _dominant_channel(images):
  """Which channel is brightest in each normalised image."""
  pixels = images.astype(np.float32) * np.asarray(data_lib.STDDEV_RGB) + (
      np.asarray(data_lib.MEAN_RGB))
  return pixels.mean(axis=(1, 2)).argmax(axis=-1)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return _make_folder(tmp_path_factory.mktemp('folder'))


# ----------------------------------------------------------------------------
# Batches.
# ----------------------------------------------------------------------------


def test_batches_shapes_dtypes_and_labels(tmp_path):
  root = _make_folder(tmp_path)
  # Hidden entries are not data (a notebook checkpoint, macOS AppleDouble).
  os.makedirs(os.path.join(root, 'train', '.ipynb_checkpoints'))
  hidden = os.path.join(root, 'train', 'dog', '.ipynb_checkpoints')
  os.makedirs(hidden)
  Image.new('RGB', (8, 8)).save(os.path.join(hidden, '000.jpg'))
  with open(os.path.join(root, 'train', 'cat', '._000.jpg'), 'wb') as f:
    f.write(b'\x00\x05\x16\x07')
  data = _datasets(_config(root))
  assert (data.num_classes, data.num_train_examples,
          data.num_eval_examples) == (3, 12, 6)
  assert data.image_shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
  assert data.class_names == CLASSES
  epoch = _take(data.train_iter_fn(0), 2)  # 12 images / 6 = one epoch.
  for batch in epoch:
    assert batch['image'].shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch['image'].dtype == np.float32
    assert batch['label'].shape == (6,) and batch['label'].dtype == np.int32
    np.testing.assert_array_equal(_dominant_channel(batch['image']),
                                  batch['label'])
  labels = np.concatenate([b['label'] for b in epoch])
  np.testing.assert_array_equal(np.bincount(labels), [4, 4, 4])

  batches = list(data.eval_iter_fn())
  assert len(batches) == 2  # 6 examples, batches of 4.
  batch = batches[-1]
  assert batch['image'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
  np.testing.assert_array_equal(batch['mask'], [1, 1, 0, 0])
  labels = np.concatenate([b['label'][b['mask'] == 1] for b in batches])
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])

  bf16 = _datasets(_config(root, input_dtype='bfloat16'))
  assert next(bf16.train_iter_fn(0))['image'].dtype.name == 'bfloat16'


def test_train_image_size_sets_only_the_training_crop(root):
  data = _datasets(_config(root, image_size=24, train_image_size=16))
  assert data.image_shape == (24, 24, 3)  # What predict and export use.
  batch = next(data.train_iter_fn(0))
  assert batch['image'].shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(_dominant_channel(batch['image']),
                                batch['label'])
  assert next(data.eval_iter_fn())['image'].shape == (4, 24, 24, 3)


def test_start_step_resumes_exactly(root):
  config = _config(root)
  data = _datasets(config)
  fresh = _take(data.train_iter_fn(0), 5)
  resumed = _take(data.train_iter_fn(3), 2)  # Built once, started at 3.
  for a, b in zip(fresh[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  resumed = _take(_train(config, start_step=3), 2)  # A fresh dataset too.
  for a, b in zip(fresh[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # Epochs differ in order and augmentation.
  assert not np.array_equal(fresh[0]['image'], fresh[2]['image'])


def test_two_processes_split_the_global_batch(root):
  config = _config(root)
  whole = _take(_train(config), 3)
  parts = [_take(_train(config, process_index=p, process_count=2), 3)
           for p in range(2)]
  for step in range(3):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]),
          whole[step][key])


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_covers_every_example_once(root, process_count):
  config = _config(root, eval_batch_size=4)
  per_process = [
      list(_datasets(config, process_index=p,
                     process_count=process_count).eval_iter_fn())
      for p in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1
  # Global batch k = the processes' k-th batches side by side.
  merged = {key: np.concatenate([b[key] for batches in zip(*per_process)
                                 for b in batches])
            for key in ('image', 'label', 'mask')}
  real = merged['mask'] == 1
  assert real.sum() == 6 and not merged['mask'][6:].any()
  val = image_folder.ImageFolder(root, 'val')
  expected = np.stack([folder.load_eval(p, IMAGE_SIZE) for p in val.paths])
  np.testing.assert_allclose(merged['image'][real],
                             data_lib.normalize(expected))
  np.testing.assert_array_equal(merged['label'][real], val.labels)


# ----------------------------------------------------------------------------
# Crops and decoding.
# ----------------------------------------------------------------------------


def test_eval_crop_is_resize_shorter_side_then_centre_crop(tmp_path):
  rng = np.random.default_rng(0)
  for h, w in ((37, 50), (61, 23), (20, 20)):
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    path = str(tmp_path / f'{h}x{w}.png')
    Image.fromarray(image).save(path)
    # torchvision: Resize(18) (= 16 / 0.875) then CenterCrop(16).
    short = 18
    size = ((short, int(short * h / w)) if w <= h else
            (int(short * w / h), short))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    top = int(round((resized.shape[0] - 16) / 2))
    left = int(round((resized.shape[1] - 16) / 2))
    want = resized[top:top + 16, left:left + 16].astype(int)
    got = folder.load_eval(path, 16).astype(int)
    with open(path, 'rb') as f:  # Encoded bytes decode the same.
      np.testing.assert_array_equal(
          folder.decode(f.read(), lambda h, w: folder.eval_window(h, w, 16),
                        16), got)
    # One resize of the window, not two steps: fixed-point rounding only.
    assert np.abs(got - want).max() <= 2
    assert np.abs(got - want).mean() < 0.1


def test_large_jpeg_decodes_in_draft_mode(tmp_path, monkeypatch):
  yy, xx = np.mgrid[0:480, 0:640]
  image = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) % 256],
                   axis=-1).astype(np.uint8)
  path = str(tmp_path / 'big.jpg')
  Image.fromarray(image).save(path, quality=95)
  with Image.open(path) as im:
    box = folder.eval_window(480, 640, IMAGE_SIZE)
    # pylint: disable-next=protected-access
    assert folder._draft(im, box, IMAGE_SIZE) == 1 / 8
    assert im.size == (80, 60)  # Decoded at 1/8 scale.
  full = np.asarray(Image.open(path).convert('RGB').resize(
      (IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR, box=box)).astype(int)
  got = folder.load_eval(path, IMAGE_SIZE).astype(int)
  assert np.abs(got - full).mean() < 3
  # Train crops land on the same pixels with and without draft mode.
  drafted = [folder.load_train(path, np.random.default_rng(i), IMAGE_SIZE)
             for i in range(4)]
  monkeypatch.setattr(folder, '_draft', lambda *args: 1.0)
  for i, image in enumerate(drafted):
    full = folder.load_train(path, np.random.default_rng(i), IMAGE_SIZE)
    assert np.abs(image.astype(int) - full).mean() < 3


def test_random_window_follows_inception_crop():
  for i in range(200):
    rng = np.random.default_rng(i)
    left, top, right, bottom = folder.random_window(60, 90, rng, IMAGE_SIZE)
    w, h = right - left, bottom - top
    assert 0 <= left and right <= 90 and 0 <= top and bottom <= 60
    assert 0.08 * 5400 * 0.9 <= w * h <= 5400
    assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25  # Rounding on small sides.
  # A 2x100 strip fits no window with aspect <= 4/3: eval centre crop.
  rng = np.random.default_rng(0)
  assert folder.random_window(2, 100, rng, IMAGE_SIZE) == folder.eval_window(
      2, 100, IMAGE_SIZE)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def _corrupt(root):
  """A garbage train file and a truncated val JPEG."""
  with open(os.path.join(root, 'train', 'dog', '000.jpg'), 'wb') as f:
    f.write(b'not a jpeg at all')
  path = os.path.join(root, 'val', 'emu', '000.jpg')
  with open(path, 'rb') as f:
    head = f.read()[:200]
  with open(path, 'wb') as f:
    f.write(head)


def test_corrupt_images_skipped_and_counted(tmp_path, caplog):
  root = _make_folder(tmp_path)
  _corrupt(root)
  data = _datasets(_config(root, on_bad_image='skip'))
  caplog.set_level(logging.WARNING)
  for batch in _take(data.train_iter_fn(0), 4):  # Two epochs.
    assert batch['image'].shape[0] == 6
    np.testing.assert_array_equal(_dominant_channel(batch['image']),
                                  batch['label'])
  masks = np.concatenate([b['mask'] for b in data.eval_iter_fn()])
  assert masks.sum() == 5
  assert '2 unreadable image files skipped' in caplog.text
  assert os.path.join('dog', '000.jpg') in caplog.text
  assert os.path.join('emu', '000.jpg') in caplog.text


def test_corrupt_images_stop(tmp_path):
  root = _make_folder(tmp_path)
  _corrupt(root)
  data = _datasets(_config(root, on_bad_image='stop'))
  with pytest.raises(errors.BadImageError,
                     match=r'(?s)dog.000\.jpg.*on_bad_image="skip"'):
    _take(data.train_iter_fn(0), 2)
  with pytest.raises(errors.BadImageError, match=r'emu.000\.jpg'):
    list(data.eval_iter_fn())


def test_missing_root_split_or_class_folders(tmp_path):
  with pytest.raises(data_lib.DatasetNotFoundError, match='does not exist'):
    _datasets(_config(str(tmp_path / 'nowhere')))
  root = _make_folder(tmp_path, sizes=(('train', 2),))
  with pytest.raises(data_lib.DatasetNotFoundError,
                     match=r"(?s)val not found.*\['train'\].*"
                     r'train/<class_name>/<image>'):
    _datasets(_config(root))
  # ImageNet val as extracted: images, no class folders.
  os.makedirs(os.path.join(root, 'val'))
  Image.new('RGB', (8, 8)).save(os.path.join(root, 'val', 'x.JPEG'))
  with pytest.raises(data_lib.DatasetNotFoundError,
                     match='1 images but no class folders'):
    _datasets(_config(root))


def test_class_folders_must_match(tmp_path):
  root = _make_folder(tmp_path, sizes=(('train', 2), ('val', 1)))
  os.rename(os.path.join(root, 'val', 'emu'), os.path.join(root, 'val', 'eel'))
  with pytest.raises(errors.FolderLayoutError,
                     match=r"(?s)only in 'train' \(1\): emu.*"
                     r"only in 'val' \(1\): eel"):
    _datasets(_config(root, batch_size=3))


def test_empty_class_folder_is_noted_and_keeps_its_index(tmp_path, caplog):
  root = _make_folder(tmp_path, sizes=(('train', 2), ('val', 1)))
  for split in ('train', 'val'):
    os.makedirs(os.path.join(root, split, 'bee'))  # Sorts first: label 0.
  caplog.set_level(logging.WARNING)
  data = _datasets(_config(root, batch_size=3, num_classes=4))
  assert data.num_classes == 4
  assert '1 of 4 class folders hold no images' in caplog.text
  assert 'bee' in caplog.text
  labels = np.concatenate([b['label'] for b in _take(data.train_iter_fn(0),
                                                      2)])
  np.testing.assert_array_equal(np.sort(labels), [1, 1, 2, 2, 3, 3])
  with pytest.raises(ValueError, match='config.num_classes=5'):
    _datasets(_config(root, batch_size=3, num_classes=5))


def test_symlinked_folders_are_followed_once(tmp_path):
  root = _make_folder(tmp_path / 'data', sizes=(('train', 6), ('val', 1)))
  train = os.path.join(root, 'train')
  # A loop (cat/loop -> train: would list every class again and again) and
  # links back into the split or its root, next to a real extra folder.
  os.symlink('..', os.path.join(train, 'cat', 'loop'))
  os.symlink(os.path.join('..', '..'), os.path.join(train, 'dog', 'root'))
  os.symlink(os.path.join(train, 'emu'), os.path.join(train, 'cat', 'emus'))
  extra = tmp_path / 'more_dogs'
  os.makedirs(extra / 'deeper')
  Image.new('RGB', (12, 12), (0, 200, 0)).save(extra / 'deeper' / 'x.png')
  os.symlink(extra, os.path.join(train, 'dog', 'more'))
  os.symlink(extra, os.path.join(train, 'dog', 'more_again'))
  listing = image_folder.ImageFolder(root, 'train')
  assert len(listing) == 19  # 18 files, plus the linked outside one once.
  np.testing.assert_array_equal(np.bincount(listing.labels), [6, 7, 6])
  assert len(set(map(os.path.realpath, listing.paths))) == 19
  assert os.path.join('dog', 'more', 'deeper', 'x.png') in listing.paths[6 + 6]
  data = _datasets(_config(root, batch_size=3, eval_batch_size=3))
  assert data.num_train_examples == 19
