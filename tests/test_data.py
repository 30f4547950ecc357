"""Tests for jaxres.data: shapes generator, in-memory, synthetic and TFDS."""
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import common
import jaxres.data as data_lib
from jaxres.data import arrays
from jaxres.data import shapes
from jaxres.data import synthetic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = common.classification_config()
  config.update(dict(
      dataset='shapes', data_dir=None, image_size=16, batch_size=16,
      eval_batch_size=16, shuffle_buffer=64, num_classes=None,
      shapes_train_size=64, shapes_eval_size=30))
  config.update(overrides)
  return config


# ----------------------------------------------------------------------------
# Shapes generator.
# ----------------------------------------------------------------------------


def test_shapes_classification_deterministic_and_balanced():
  images, labels = shapes.make_classification(205, image_size=16, seed=3)
  again, labels_again = shapes.make_classification(205, image_size=16, seed=3)
  other, _ = shapes.make_classification(205, image_size=16, seed=4)
  assert images.shape == (205, 16, 16, 3) and images.dtype == np.uint8
  assert labels.shape == (205,) and labels.dtype == np.int32
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(labels, labels_again)
  assert not np.array_equal(images, other)
  counts = np.bincount(labels, minlength=shapes.NUM_CLASSES)
  assert len(counts) == shapes.NUM_CLASSES == 10
  assert counts.min() >= 20 and counts.max() <= 21
  # Non-square sizes work too.
  images, _ = shapes.make_classification(10, image_size=(12, 20), seed=0)
  assert images.shape == (10, 12, 20, 3)


def test_shapes_segmentation_masks():
  images, masks = shapes.make_segmentation(40, image_size=32, seed=0,
                                           num_classes=6)
  again, masks_again = shapes.make_segmentation(40, image_size=32, seed=0,
                                                num_classes=6)
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(masks, masks_again)
  assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
  assert masks.shape == (40, 32, 32) and masks.dtype == np.uint8
  values = set(np.unique(masks).tolist())
  assert values <= set(range(6)) | {255}
  assert {0, 255} <= values and len(values - {0, 255}) >= 3
  assert np.all((masks != 0).any(axis=(1, 2)))  # Every image has an object.
  assert 0 < np.mean(masks == 255) < 0.1
  _, hard = shapes.make_segmentation(5, 32, 0, num_classes=3,
                                     ignore_borders=False)
  assert set(np.unique(hard).tolist()) <= {0, 1, 2}
  with pytest.raises(ValueError, match='num_classes'):
    shapes.make_segmentation(1, 32, 0, num_classes=12)


# ----------------------------------------------------------------------------
# In-memory pipeline.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def small_set():
  images, _ = shapes.make_classification(50, image_size=8, seed=0)
  labels = np.arange(50, dtype=np.int32)  # Labels name the examples.
  return images, labels


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_arrays_resume_equals_skipping(small_set):
  images, labels = small_set
  kwargs = dict(batch_size=8, seed=7, augment_fn=arrays.random_crop_flip(2))
  fresh = _take(arrays.train_iterator(images, labels, **kwargs), 14)
  # 50 // 8 = 6 steps per epoch: steps 5..13 cross two epoch boundaries.
  resumed = _take(arrays.train_iterator(images, labels, start_step=5,
                                        **kwargs), 9)
  for a, b in zip(fresh[5:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert fresh[0]['image'].dtype == np.float32
  assert fresh[0]['label'].dtype == np.int32
  # Each epoch is a permutation without repeats; epochs differ.
  epoch0 = np.concatenate([b['label'] for b in fresh[:6]])
  epoch1 = np.concatenate([b['label'] for b in fresh[6:12]])
  assert len(set(epoch0.tolist())) == 48
  assert not np.array_equal(epoch0, epoch1)


def test_arrays_process_slices_concatenate_to_global_batch(small_set):
  images, labels = small_set
  aug = arrays.random_crop_flip(2)
  one = _take(arrays.train_iterator(images, labels, 8, seed=1, start_step=3,
                                    augment_fn=aug), 4)
  two = [  # batch_size is the global batch: 4 rows per process.
      _take(arrays.train_iterator(images, labels, 8, seed=1, start_step=3,
                                  process_index=p, process_count=2,
                                  augment_fn=aug), 4) for p in range(2)
  ]
  for step, batch in enumerate(one):
    for key in ('image', 'label'):
      joined = np.concatenate([two[0][step][key], two[1][step][key]])
      np.testing.assert_array_equal(batch[key], joined)


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_arrays_eval_visits_every_example_once(small_set, process_count):
  images, labels = small_set
  seen = []
  num_batches = set()
  for p in range(process_count):
    # Global batch 8 * process_count: 8 rows per process.
    batches = list(arrays.eval_iterator(images, labels, 8 * process_count, p,
                                        process_count))
    num_batches.add(len(batches))
    for b in batches:
      assert b['image'].shape == (8, 8, 8, 3) and b['mask'].shape == (8,)
      assert b['mask'].dtype == np.float32
      seen.extend(b['label'][b['mask'] == 1].tolist())
  assert len(num_batches) == 1  # Same number of batches on every process.
  assert sorted(seen) == list(range(50))


def test_arrays_segmentation_labels_follow_augmentation():
  images = np.random.default_rng(0).integers(0, 200, (6, 10, 10, 3),
                                             dtype=np.uint8)
  masks = images[..., 0].copy()
  batch = next(arrays.train_iterator(images, masks, 6, seed=0, normalize=False,
                                     augment_fn=arrays.random_crop_flip(3)))
  image, label = batch['image'], batch['label']
  assert label.shape == (6, 10, 10)
  real = label != 255
  np.testing.assert_array_equal(label[real], image[..., 0][real])
  assert np.all(image[..., 0][~real] == 0)  # Padding: image 0, label 255.
  ev = list(arrays.eval_iterator(images, masks, 4))
  assert np.all(ev[-1]['label'][2:] == 255) and ev[-1]['mask'].sum() == 2


def test_shapes_entry_point():
  config = _config()
  ds = data_lib.get_classification_datasets(
      config, seed=0, process_index=0, process_count=2)
  assert (ds.num_train_examples, ds.num_eval_examples) == (64, 30)
  assert ds.num_classes == 10 and tuple(ds.image_shape) == (16, 16, 3)
  assert ds.class_names == shapes.CLASS_NAMES
  batch = next(ds.train_iter_fn(0))
  assert batch['image'].shape == (8, 16, 16, 3)  # Global 16 over 2 processes.
  assert np.abs(batch['image'].mean()) < 3
  eval_batches = list(ds.eval_iter_fn())
  assert eval_batches[0]['image'].shape == (8, 16, 16, 3)
  assert len(list(ds.eval_iter_fn())) == len(eval_batches) == 2
  with pytest.raises(ValueError, match='num_classes'):
    data_lib.get_classification_datasets(
        _config(num_classes=1000), seed=0, process_index=0,
        process_count=1)
  with pytest.raises(ValueError, match='divisible'):
    data_lib.get_classification_datasets(
        config, seed=0, process_index=0, process_count=3)


def test_shapes_resume_and_process_slices_of_the_entry_point():
  config = _config()
  whole = data_lib.get_classification_datasets(
      config, seed=2, process_index=0, process_count=1)
  fresh = _take(whole.train_iter_fn(0), 6)
  resumed = _take(whole.train_iter_fn(3), 3)  # The same dataset, built once.
  parts = [_take(data_lib.get_classification_datasets(
      config, seed=2, process_index=p, process_count=2).train_iter_fn(3), 3)
           for p in range(2)]
  for step in range(3):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(resumed[step][key], fresh[3 + step][key])
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]),
          fresh[3 + step][key])


# ----------------------------------------------------------------------------
# Synthetic.
# ----------------------------------------------------------------------------


def test_synthetic_iterator():
  it = synthetic.synthetic_iterator(4, 8, 10, seed=0, dtype='bfloat16')
  a, b = next(it), next(it)
  assert a['image'].shape == (4, 8, 8, 3)
  assert a['image'].dtype.name == 'bfloat16'
  assert a['label'].dtype == np.int32 and a['label'].max() < 10
  np.testing.assert_array_equal(a['label'], b['label'])
  seg = list(synthetic.synthetic_iterator(2, (6, 10), 5, segmentation=True,
                                          num_batches=3, with_mask=True))
  assert len(seg) == 3 and seg[0]['label'].shape == (2, 6, 10)
  assert seg[0]['mask'].tolist() == [1.0, 1.0]
  # batch_size is global: the processes' rows make the one-process batch.
  whole = next(synthetic.synthetic_iterator(4, 8, 10, seed=0))
  parts = [next(synthetic.synthetic_iterator(4, 8, 10, seed=0,
                                             process_index=p, process_count=2))
           for p in range(2)]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][key], parts[1][key]]), whole[key])


def test_synthetic_and_shapes_need_no_tensorflow():
  code = '\n'.join([
      'import sys',
      "sys.modules['tensorflow'] = None",
      "sys.modules['tensorflow_datasets'] = None",
      'from configs import common',
      'from jaxres import data',
      'from jaxres.data import synthetic, arrays, shapes',
      'config = common.classification_config()',
      'config.update(dict(dataset="synthetic",',
      '    image_size=8, batch_size=4, eval_batch_size=4, num_classes=3))',
      'ds = data.get_classification_datasets(config, seed=0,',
      '    process_index=0, process_count=1)',
      'assert next(ds.train_iter_fn(0))["image"].shape == (4, 8, 8, 3)',
      "assert ds.class_names == ('0', '1', '2')",
      'assert len(list(ds.eval_iter_fn())) == synthetic.EVAL_BATCHES',
      "assert 'tensorflow' not in [m.split('.')[0] for m, v in",
      '    sys.modules.items() if v is not None]',
  ])
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------
# TFDS pipeline.
# ----------------------------------------------------------------------------


def test_imagenet_missing_raises_clear_error(tmp_path):
  config = _config(dataset='imagenet2012', data_dir=str(tmp_path),
                   image_size=224)
  with pytest.raises(data_lib.DatasetNotFoundError) as info:
    data_lib.get_classification_datasets(
        config, seed=0, process_index=0, process_count=1)
  message = str(info.value)
  assert 'manual' in message
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in message
  assert 'ILSVRC2012_img_train.tar' in message and 'tfds build' in message
  assert not any(tmp_path.iterdir())  # Nothing was downloaded or created.
  with pytest.raises(ValueError, match='synthetic'):
    data_lib.get_classification_datasets(
        _config(dataset='no_such_dataset_xyz'), seed=0,
        process_index=0, process_count=1)


def test_imagenet_on_mock_data(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = _config(dataset='imagenet2012', data_dir=str(tmp_path),
                   image_size=224, batch_size=4, eval_batch_size=4,
                   num_classes=1000)
  with tfds.testing.mock_data(num_examples=10):
    ds = data_lib.get_classification_datasets(
        config, seed=0, process_index=0, process_count=1)
    assert ds.num_classes == 1000 and tuple(ds.image_shape) == (224, 224, 3)
    assert len(ds.class_names) == 1000
    batch = next(ds.train_iter_fn(0))
    assert batch['image'].shape == (4, 224, 224, 3)
    assert batch['image'].dtype == np.float32
    assert np.all(np.isfinite(batch['image']))
    assert batch['label'].dtype == np.int32
    assert np.all((batch['label'] >= 0) & (batch['label'] < 1000))
    evals = list(ds.eval_iter_fn())
    assert [b['mask'].tolist() for b in evals] == [[1.0] * 4] * 2 + [
        [1.0, 1.0, 0.0, 0.0]]
    assert evals[-1]['image'].shape == (4, 224, 224, 3)

    # A PNG-encoded dataset takes the non-JPEG decode path.
    cifar = data_lib.get_classification_datasets(
        _config(dataset='cifar10', image_size=24, num_classes=10,
                batch_size=4, input_dtype='bfloat16'),
        seed=0, process_index=0, process_count=1)
    assert len(cifar.class_names) == 10
    batch = next(cifar.train_iter_fn(0))
    assert batch['image'].shape == (4, 24, 24, 3)
    assert batch['image'].dtype.name == 'bfloat16'


def test_tfds_train_image_size_sets_only_the_training_crop(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = _config(dataset='imagenet2012', data_dir=str(tmp_path),
                   image_size=24, train_image_size=16, batch_size=4,
                   eval_batch_size=4, num_classes=1000, shuffle_buffer=8)
  with tfds.testing.mock_data(num_examples=4):
    ds = data_lib.get_classification_datasets(
        config, seed=0, process_index=0, process_count=1)
    assert tuple(ds.image_shape) == (24, 24, 3)
    assert next(ds.train_iter_fn(0))['image'].shape == (4, 16, 16, 3)
    assert next(ds.eval_iter_fn())['image'].shape == (4, 24, 24, 3)


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  """A real prepared TFDS dataset: 37 train / 11 validation JPEGs."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class JaxresTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3),
                                           encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(num_classes=5),
          }))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(0, 37),
              'validation': self._generate_examples(1, 11)}

    def _generate_examples(self, seed, n):
      rng = np.random.default_rng(seed)
      for i in range(n):
        height, width = rng.integers(20, 60, 2)
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        yield i, dict(image=image, label=i % 5)

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  JaxresTinyImages(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=3))
  return data_dir


def test_tfds_finish_is_the_broadcast_normalisation_bit_for_bit():
  """imagenet._finish (float32 crop into the resize, [S, S, 3] mean/std
  planes) writes the bits of resize(uint8) then broadcast (x - mean) / std."""
  from jaxres.data import imagenet  # pylint: disable=g-import-not-at-top
  tf = imagenet._tf()  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  crop = tf.constant(rng.integers(0, 256, (37, 29, 3), dtype=np.uint8))
  for interpolation in ('bicubic', 'bilinear'):
    for dtype in (tf.float32, tf.bfloat16):
      # pylint: disable-next=protected-access
      out = imagenet._finish(crop, 24, dtype, interpolation)
      ref = tf.clip_by_value(tf.image.resize([crop], [24, 24],
                                             method=interpolation)[0], 0., 255.)
      ref = (ref - tf.constant(data_lib.MEAN_RGB, shape=[1, 1, 3])) / (
          tf.constant(data_lib.STDDEV_RGB, shape=[1, 1, 3]))
      ref = tf.cast(ref, dtype)
      assert out.numpy().tobytes() == ref.numpy().tobytes()


def test_tfds_resume_and_sharding(tiny_tfds):
  # pylint: disable-next=g-import-not-at-top
  from jaxres.data import imagenet, tfds_train
  builder = imagenet.get_builder('jaxres_tiny_images', tiny_tfds)
  assert imagenet.class_names(builder) == ('0', '1', '2', '3', '4')
  kwargs = dict(seed=3, image_size=16, shuffle_buffer=16)
  fresh = _take(tfds_train.train_iterator(builder, 4, **kwargs), 12)
  # 37 // 4 = 9 steps per epoch: steps 7..11 cross into epoch 1.
  resumed = _take(tfds_train.train_iterator(builder, 4, start_step=7, **kwargs),
                  5)
  for a, b in zip(fresh[7:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert fresh[0]['image'].shape == (4, 16, 16, 3)
  for process_count in (1, 2, 3):
    total, lengths = 0.0, set()
    for p in range(process_count):
      batches = list(imagenet.eval_iterator(  # Global batch: 2 per process.
          builder, 2 * process_count, process_index=p,
          process_count=process_count, image_size=16))
      lengths.add(len(batches))
      total += sum(float(b['mask'].sum()) for b in batches)
    assert total == 11 and len(lengths) == 1


def test_tfds_stream_order_does_not_depend_on_process_count(tiny_tfds):
  """read='stream': the global batch is the same for 1, 2 and 4 processes
  (and equals read='shards' with one process), fresh or resumed."""
  # pylint: disable-next=g-import-not-at-top
  from jaxres.data import imagenet, tfds_train
  builder = imagenet.get_builder('jaxres_tiny_images', tiny_tfds)
  kwargs = dict(seed=5, image_size=16, shuffle_buffer=16)
  # 37 // 4 = 9 steps per epoch: 11 steps cross into epoch 1.
  one = _take(tfds_train.train_iterator(builder, 4, read='shards', **kwargs),
              11)
  for process_count in (1, 2, 4):
    for start in (0, 7):
      parts = [_take(tfds_train.train_iterator(
          builder, 4, start_step=start, process_index=p,
          process_count=process_count, read='stream', **kwargs), 11 - start)
               for p in range(process_count)]
      for step in range(start, 11):
        for key in ('image', 'label'):
          glued = np.concatenate([part[step - start][key] for part in parts])
          np.testing.assert_array_equal(glued, one[step][key])
  # 'shards' with two processes is another order (why it cannot continue a
  # run on another number of processes).
  shards = [_take(tfds_train.train_iterator(
      builder, 4, process_index=p, process_count=2, read='shards', **kwargs),
                    2)
            for p in range(2)]
  glued = np.concatenate([shards[0][0]['image'], shards[1][0]['image']])
  assert not np.array_equal(glued, one[0]['image'])


def test_train_order_and_tfds_read_resolution():
  tfds_config = _config(dataset='imagenet2012')
  assert data_lib.tfds_read(tfds_config, 1) == 'stream'
  assert data_lib.tfds_read(tfds_config, 4) == 'shards'
  assert data_lib.train_order(tfds_config, 1) == 'global'
  assert data_lib.train_order(tfds_config, 4) == 'shards of 4 processes'
  # Continuing a run whose order was global keeps it on 4 processes.
  assert data_lib.tfds_read(tfds_config, 4, recorded_order='global') == 'stream'
  assert data_lib.train_order(tfds_config, 4, read='stream') == 'global'
  tfds_config.tfds_read = 'shards'
  assert data_lib.tfds_read(tfds_config, 4, recorded_order='global') == 'shards'
  for dataset in ('shapes', 'folder', 'synthetic'):
    assert data_lib.train_order(_config(dataset=dataset), 4) == 'global'
