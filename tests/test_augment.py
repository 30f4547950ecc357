"""Tests for jaxres/data/augment.py, augment_ops.py and their pipelines."""
import math

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps
import pytest

from configs import common
import jaxres.data as data_lib
from tests import helpers
from jaxres import config_checks
from jaxres.data import augment
from jaxres.data import augment_ops
from jaxres.data import batching
from jaxres.data import folder
from jaxres.data import random_erasing
from jaxres.data import shapes

tf = pytest.importorskip('tensorflow')

SIZE = 32
POLICIES = ('randaugment', 'trivialaugment', 'autoaugment')


@pytest.fixture(scope='module')
def image():
  images, _ = shapes.make_classification(1, image_size=SIZE, seed=0)
  return images[0]


def _seed(seed, step, index):
  """What folder.py hands augment.py for example ``index`` at ``step``."""
  return augment.seed_from_rng(batching.example_rng(seed, step, index))


def _pixels(normalised):
  return normalised * np.asarray(data_lib.STDDEV_RGB) + np.asarray(
      data_lib.MEAN_RGB)


# ----------------------------------------------------------------------------
# Ops and policies.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('policy', POLICIES)
def test_policy_is_a_function_of_seed_step_and_index(policy, image):
  fn = augment.NumpyAugment(augment.Augment(policy=policy))
  out = fn(image, _seed(0, 3, 5))
  assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, fn(image, _seed(0, 3, 5)))
  pixels = _pixels(out)
  assert pixels.min() > -0.01 and pixels.max() < 255.01
  np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)
  # Other steps, indices and seeds draw other augmentations (a draw may be
  # the identity, e.g. RandAugment skips each op with probability 1/2).
  others = [fn(image, _seed(seed, step, index))
            for seed, step, index in ((0, 4, 5), (0, 3, 6), (1, 3, 5),
                                      (0, 9, 0), (0, 0, 9), (2, 7, 1))]
  distinct = {o.tobytes() for o in others + [out]}
  assert len(distinct) >= 5, policy


def _level0(name):
  """RandAugment's value of op ``name`` at level 0."""
  fn = dict(augment._RANDAUGMENT)[name]  # pylint: disable=protected-access
  return float(fn(tf.constant(0.0), 1.0, float(SIZE), float(SIZE)))


def test_magnitude_zero_is_identity(image):
  x = tf.constant(image, tf.float32)
  identity_at_0 = ('rotate', 'solarize', 'solarize_add', 'color', 'contrast',
                   'brightness', 'sharpness', 'shear_x', 'shear_y',
                   'translate_x', 'translate_y')
  assert set(identity_at_0) < set(augment.RANDAUGMENT_OPS)
  ops = dict(augment_ops.OPS)
  for name in identity_at_0:
    out = ops[name](x, tf.constant(_level0(name))).numpy()
    np.testing.assert_array_equal(out, image, err_msg=name)
  # timm's increasing Posterize keeps 4 bits at level 0 (0 at level 10).
  assert _level0('posterize') == 4.0
  # torchvision's tables: bin 0 is the identity (Solarize at 255 inverts
  # only pure white, as torchvision's does).
  # pylint: disable=protected-access
  trivial = {name: m for name, m, _ in augment._trivial_table()}
  for name in ('shear_x', 'translate_y', 'rotate', 'color', 'sharpness'):
    assert trivial[name][0] == 0
  assert trivial['posterize'][[0, 15, 30]].tolist() == [8, 5, 2]
  assert trivial['rotate'][-1] == 135 and trivial['solarize'][-1] == 0
  aa = augment._autoaugment_magnitude
  assert [aa('posterize', b) for b in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5,
                                                      4, 4]
  assert aa('rotate', 9) == 30 and aa('solarize', 0) == 255
  assert aa('color', 0) == 0 and math.isclose(aa('shear_x', 9), 0.3)
  # pylint: enable=protected-access


def test_ops_follow_pil(image):
  """Colour ops as PIL's ImageEnhance / ImageOps (within 1 for rounding)."""
  pil = Image.fromarray(image)
  x = tf.constant(image, tf.float32)
  pairs = (
      (augment_ops.color(x, 1.6), ImageEnhance.Color(pil).enhance(1.6), 1),
      (augment_ops.contrast(x, 0.4), ImageEnhance.Contrast(pil).enhance(0.4), 1),
      (augment_ops.brightness(x, 1.3),
       ImageEnhance.Brightness(pil).enhance(1.3), 1),
      (augment_ops.sharpness(x, 1.8), ImageEnhance.Sharpness(pil).enhance(1.8),
       1),
      (augment_ops.posterize(x, 3.0), ImageOps.posterize(pil, 3), 0),
      (augment_ops.solarize(x, 100.0), ImageOps.solarize(pil, 100), 0),
      (augment_ops.auto_contrast(x), ImageOps.autocontrast(pil), 1),
      (augment_ops.equalize(x), ImageOps.equalize(pil), 0),
      (augment_ops.invert(x), ImageOps.invert(pil), 0),
      # Affine ops sample as PIL does, away from the filled border.
      (augment_ops.translate_x(x, 5.0),
       pil.transform(pil.size, Image.AFFINE, (1, 0, 5, 0, 1, 0),
                     Image.BILINEAR), 0),
  )
  for i, (ours, theirs, tolerance) in enumerate(pairs):
    diff = np.abs(ours.numpy() - np.asarray(theirs, np.float32))
    if i == len(pairs) - 1:
      diff = diff[:, :-6]
    assert diff.max() <= tolerance, i
  rotated = augment_ops.rotate(x, 20.0).numpy()[4:-4, 4:-4]
  reference = np.asarray(pil.rotate(20, Image.BILINEAR), np.float32)[4:-4, 4:-4]
  assert np.abs(rotated - reference).mean() < 2  # PIL's fixed-point bilinear.
  # The uncovered corner takes the ImageNet mean colour.
  corner = augment_ops.rotate(x, 45.0).numpy()[0, 0]
  np.testing.assert_allclose(corner, np.round(data_lib.MEAN_RGB), atol=1)


def test_random_erasing_area_and_fill():
  zeros = tf.zeros([64, 64, 3])
  fractions = []
  for i in range(40):
    out = random_erasing.random_erase(zeros, tf.constant([7, i], tf.int64), 1.0)
    erased = out.numpy() != 0
    fractions.append(erased.any(-1).mean())
    if erased.any():
      rows, cols = np.nonzero(erased.any(-1))
      # One rectangle, every channel filled.
      assert erased.any(-1).sum() == (
          (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
      assert erased[rows.min():rows.max() + 1,
                    cols.min():cols.max() + 1].all()
  fractions = np.array(fractions)
  # timm: area 2-33.3 %, h and w rounded to whole pixels.
  assert (fractions > 0).mean() > 0.9
  erased = fractions[fractions > 0]
  assert erased.min() >= 0.015 and erased.max() <= 0.36
  assert erased.max() - erased.min() > 0.1  # Sizes vary.
  values = random_erasing.random_erase(zeros, tf.constant([7, 0], tf.int64),
                                1.0).numpy()
  values = values[values != 0]
  assert abs(values.mean()) < 0.2 and 0.8 < values.std() < 1.2
  # Probability 0 never erases; 0.5 erases about half the time.
  for i in range(5):
    np.testing.assert_array_equal(
        random_erasing.random_erase(zeros, tf.constant([7, i], tf.int64), 0.0),
        zeros)
  half = [random_erasing.random_erase(zeros, tf.constant([8, i], tf.int64),
                               0.5).numpy().any() for i in range(40)]
  assert 8 <= sum(half) <= 32


# ----------------------------------------------------------------------------
# Eval resize (crop_pct) and interpolation.
# ----------------------------------------------------------------------------


def test_eval_crop_pct_sets_the_resize():
  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top
  # Folder: shorter side resized to floor(32 / 0.5) = 64, centre 32 crop,
  # i.e. the centre half of the shorter side in source pixels.
  left, top, right, bottom = folder.eval_window(100, 200, 32, crop_pct=0.5)
  assert (right - left, bottom - top) == (50, 50)
  assert (left, top) == (75, 25)
  # None keeps 0.875 (Resize(256) + CenterCrop(224)).
  assert folder.eval_window(256, 300, 224) == folder.eval_window(
      256, 300, 224, crop_pct=0.875)
  left, top, right, bottom = folder.eval_window(256, 300, 224)
  assert (right - left, bottom - top) == (224, 224)
  # TFDS: the window side is crop_pct of the shorter side; None keeps
  # image_size / (image_size + 32).
  shape = tf.constant([100, 200, 3])
  center_window = imagenet._center_window  # pylint: disable=protected-access
  assert center_window(shape, 32, 0.5).numpy().tolist() == [25, 75, 50, 50]
  window = center_window(shape, 224).numpy()
  assert window[2] == int(224 / 256 * 100)
  # The crop is resized to image_size, whatever crop_pct.
  jpeg = tf.io.encode_jpeg(tf.constant(
      np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)))
  for crop_pct in (0.5, 1.0):
    out = imagenet.preprocess_for_eval(jpeg, 24, crop_pct=crop_pct)
    assert out.shape == (24, 24, 3)


def test_interpolation(tmp_path):
  path = str(tmp_path / 'x.png')
  Image.fromarray(np.random.default_rng(0).integers(
      0, 255, (50, 70, 3), np.uint8)).save(path)
  bilinear = folder.load_eval(path, 16)
  np.testing.assert_array_equal(
      bilinear, folder.load_eval(path, 16, interpolation='bilinear'))
  bicubic = folder.load_eval(path, 16, interpolation='bicubic')
  assert bicubic.shape == (16, 16, 3) and not np.array_equal(bilinear, bicubic)
  with pytest.raises(ValueError, match='interpolation'):
    folder.load_eval(path, 16, interpolation='nearest')
  # predict.py preprocesses as the eval pipeline of the same config.
  from etils.epath import Path  # pylint: disable=g-import-not-at-top
  from jaxres import predict  # pylint: disable=g-import-not-at-top
  config = common.classification_config()
  config.update(dict(dataset='folder', image_size=16, eval_crop_pct=0.6,
                     interpolation='bicubic'))
  np.testing.assert_array_equal(
      predict.classification_input(Path(path), config),
      folder.load_eval(path, 16, crop_pct=0.6, interpolation='bicubic'))


def test_config_defaults_and_checks():
  config = common.classification_config()
  assert config.augment == 'none' and config.random_erasing == 0
  assert config.eval_crop_pct is None and config.interpolation is None
  assert not augment.Augment.from_config(config).active
  config.dataset = 'folder'
  config.batch_size = config.eval_batch_size = 8
  for field, value, words in (
      ('augment', 'randaug', 'is not one of none, randaugment'),
      ('randaugment_m', 30.0, 'timm'),
      ('randaugment_n', 0, 'randaugment_n=0'),
      ('random_erasing', 1.5, 'probability'),
      ('eval_crop_pct', 1.2, 'eval_crop_pct=1.2'),
      ('interpolation', 'nearest', 'bilinear, bicubic')):
    bad = config.copy_and_resolve_references()
    bad.augment = 'randaugment'
    bad[field] = value
    with pytest.raises(config_checks.ConfigError, match=words):
      config_checks.check_config(bad)
  shapes_config = config.copy_and_resolve_references()
  shapes_config.update(dict(dataset='shapes', augment='autoaugment'))
  with pytest.raises(config_checks.ConfigError, match='TFDS and folder'):
    config_checks.check_config(shapes_config)


def test_train_image_size_checks():
  config = common.classification_config()
  assert config.train_image_size is None
  config.update(dict(dataset='folder', batch_size=8, eval_batch_size=8,
                     image_size=224, train_image_size=176))
  config_checks.check_config(config)
  config.train_image_size = 0
  with pytest.raises(config_checks.ConfigError, match='positive int'):
    config_checks.check_config(config)
  for dataset in ('shapes', 'synthetic'):
    config.update(dict(dataset=dataset, image_size=32, train_image_size=32))
    config_checks.check_config(config)  # Equal to image_size: allowed.
    config.train_image_size = 24
    with pytest.raises(config_checks.ConfigError,
                       match=f'train_image_size=24 .*{dataset}'):
      config_checks.check_config(config)


# ----------------------------------------------------------------------------
# Pipelines: resume and process count.
# ----------------------------------------------------------------------------


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_folder_randaugment_resumes_exactly(tmp_path):
  root = helpers.make_class_folder(tmp_path)
  config = common.classification_config()
  config.update(dict(dataset='folder', data_dir=root, image_size=SIZE,
                     batch_size=6, eval_batch_size=6, data_workers=2,
                     prefetch_batches=1, augment='randaugment',
                     random_erasing=0.5, eval_crop_pct=0.95,
                     interpolation='bicubic'))

  def train(start_step, process_index=0, process_count=1):
    data = data_lib.get_classification_datasets(
        config, seed=1, process_index=process_index,
        process_count=process_count)
    return data.train_iter_fn(start_step)

  fresh = _take(train(0), 5)  # 12 images / 6: epochs of 2 steps.
  resumed = _take(train(3), 2)
  for a, b in zip(fresh[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # Two processes make the rows of the same global batch.
  parts = [_take(train(3, p, 2), 1)[0]['image'] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), fresh[3]['image'])
  # The augmentation changes the images, and differs between epochs.
  config.augment, config.random_erasing = 'none', 0.0
  plain = _take(train(0), 1)[0]
  assert not np.array_equal(plain['image'], fresh[0]['image'])
  np.testing.assert_array_equal(plain['label'], fresh[0]['label'])
  assert np.isfinite(fresh[0]['image']).all()


def test_tfds_randaugment_resumes_exactly(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = common.classification_config()
  config.update(dict(dataset='imagenet2012', data_dir=str(tmp_path),
                     image_size=SIZE, batch_size=4, eval_batch_size=4,
                     num_classes=1000, shuffle_buffer=8,
                     augment='randaugment', randaugment_mstd=0.5,
                     random_erasing=0.5))
  with tfds.testing.mock_data(num_examples=12):  # 3 steps per epoch.
    def train(start_step, process_index=0, process_count=1):
      data = data_lib.get_classification_datasets(
          config, seed=2, process_index=process_index,
          process_count=process_count)
      return data.train_iter_fn(start_step)

    fresh = _take(train(0), 3)
    resumed = _take(train(1), 2)
    for a, b in zip(fresh[1:], resumed):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
    assert fresh[0]['image'].shape == (4, SIZE, SIZE, 3)
    assert np.isfinite(fresh[0]['image']).all()
    # 'stream': two processes make the rows of the one-process batch.
    config.tfds_read = 'stream'
    parts = [_take(train(1, p, 2), 1)[0]['image'] for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), fresh[1]['image'])
