"""Tests for the segmentation input pipelines (jaxres/data/segmentation.py,
seg_transforms.py, voc.py, seg_tfds.py). CPU only, small images."""
import io
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import segmentation_common
from jaxres import data as data_lib
from jaxres.data import seg_tfds
from jaxres.data import seg_transforms
from jaxres.data import segmentation
from jaxres.data import voc

NUM_CLASSES = 5


def _palette():
  # VOC-like colour map: a colour per index, unlike the index itself.
  pal = np.zeros((256, 3), np.uint8)
  for i in range(256):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal[i] = r, g, b
  return pal.reshape(-1).tolist()


def _save_palette_png(path, mask):
  h, w = mask.shape
  im = Image.frombytes('P', (w, h), mask.astype(np.uint8).tobytes())
  im.putpalette(_palette())
  im.save(path)


def _make_voc(root, num_train=8, num_val=5, mask_fn=None, seed=0,
              mask_dir='SegmentationClass', mask_size_fn=None):
  """A VOC-style folder; returns {id: (image, mask)}."""
  rng = np.random.default_rng(seed)
  for d in ('JPEGImages', mask_dir, 'ImageSets/Segmentation'):
    os.makedirs(os.path.join(root, d), exist_ok=True)
  examples = {}
  ids = [f'2007_{i:06d}' for i in range(num_train + num_val)]
  for k, name in enumerate(ids):
    h, w = int(rng.integers(20, 40)), int(rng.integers(20, 48))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, NUM_CLASSES, (h, w)).astype(np.uint8)
    mask[:2] = 255  # An ignore border.
    if mask_fn is not None:
      mask = mask_fn(k, mask)
    Image.fromarray(image).save(os.path.join(root, 'JPEGImages', name + '.jpg'),
                                quality=95)
    if mask_size_fn is not None:
      mask = mask_size_fn(k, mask)
    _save_palette_png(os.path.join(root, mask_dir, name + '.png'), mask)
    examples[name] = mask
  split_dir = os.path.join(root, 'ImageSets/Segmentation')
  splits = {'train': ids[:num_train], 'val': ids[num_train:]}
  for split, split_ids in splits.items():
    with open(os.path.join(split_dir, split + '.txt'), 'w') as f:
      f.write('\n'.join(split_ids) + '\n')
  return examples


def _config(**kwargs):
  config = segmentation_common.segmentation_config()
  fields = dict(dataset='voc', data_dir=None, num_classes=NUM_CLASSES,
                crop_size=24, batch_size=4, eval_batch_size=3, data_workers=2,
                on_bad_image='stop', scale_range=(0.5, 2.0), eval_size=None,
                eval_pad_multiple=8)
  fields.update(kwargs)
  for key, value in fields.items():
    if key in config:
      config[key] = value
    else:  # Not declared in segmentation_common (shapes_*_size).
      config.update(ml_collections.ConfigDict({key: value}))
  return config


def _datasets(config, **kwargs):
  kwargs.setdefault('seed', 0)
  return segmentation.get_segmentation_datasets(config, **kwargs)


def _train(config, start_step=0, **kwargs):
  return _datasets(config, **kwargs).train_iter_fn(start_step)


# ----------------------------------------------------------------------------
# VOC folders and label checks.
# ----------------------------------------------------------------------------


def test_voc_reads_palette_indices(tmp_path):
  examples = _make_voc(str(tmp_path))
  source = voc.VocFolder(str(tmp_path), 'val')
  assert len(source) == 5
  for i, name in enumerate(source.ids):
    image, label = source.load(i)
    # Decoded once, left as PIL: the transforms resize it before numpy.
    assert isinstance(image, Image.Image) and image.mode == 'RGB'
    image = np.asarray(image)
    assert image.dtype == np.uint8 and image.shape == label.shape + (3,)
    np.testing.assert_array_equal(label, examples[name])
    assert source.image_size(i) == label.shape


def test_voc_end_to_end_and_eval_covers_each_example_once(tmp_path):
  examples = _make_voc(str(tmp_path))
  data = _datasets(_config(data_dir=str(tmp_path)))
  assert (data.num_train_examples, data.num_eval_examples) == (8, 5)
  assert data.num_classes == NUM_CLASSES and data.ignore_label == 255
  batch = next(data.train_iter_fn(0))
  assert batch['image'].shape == (4, 24, 24, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (4, 24, 24)
  assert batch['label'].dtype == np.int32

  val = [examples[k] for k in sorted(examples)[8:]]
  seen = []
  for batch in data.eval_iter_fn():
    # Full resolution, padded to the largest image rounded up to 8.
    assert batch['image'].shape[1:3] == data.eval_label_shape
    assert data.eval_label_shape[0] % 8 == 0
    for i in np.flatnonzero(batch['mask']):
      h, w = batch['label_hw'][i]
      seen.append(batch['label'][i, :h, :w])
      assert (batch['label'][i, h:] == 255).all()
      assert (batch['label'][i, :, w:] == 255).all()
      assert (batch['image'][i, h:] == 0).all()
  assert len(seen) == len(val)
  for got, want in zip(seen, val):
    np.testing.assert_array_equal(got, want)


def test_eval_fixed_size_keeps_original_labels(tmp_path):
  examples = _make_voc(str(tmp_path))
  data = _datasets(_config(data_dir=str(tmp_path), eval_size=16))
  val = [examples[k] for k in sorted(examples)[8:]]
  batches = list(data.eval_iter_fn())
  assert len(batches) == 2
  got = []
  for batch in batches:
    assert batch['image'].shape[1:] == (16, 16, 3)
    for i in np.flatnonzero(batch['mask']):
      h, w = batch['label_hw'][i]
      got.append(batch['label'][i, :h, :w])
  for g, want in zip(got, val, strict=True):
    np.testing.assert_array_equal(g, want)


def test_binary_0_255_masks_are_detected_and_mapped(tmp_path):
  binary = lambda k, m: np.where(m > 0, 255, 0).astype(np.uint8)
  _make_voc(str(tmp_path), mask_fn=binary)
  config = _config(data_dir=str(tmp_path), num_classes=2)
  with pytest.raises(segmentation.LabelError,
                     match='binary_mask_255_to_1=True'):
    _datasets(config)
  config.binary_mask_255_to_1 = True
  data = _datasets(config)
  labels = next(data.train_iter_fn(0))['label']
  assert set(np.unique(labels)) <= {0, 1, 255}
  assert (labels == 1).any()


def test_out_of_range_values_name_files_and_values(tmp_path):
  def bad(k, m):
    if k == 2:
      m = m.copy()
      m[5, 5] = 9
    return m
  _make_voc(str(tmp_path), mask_fn=bad)
  with pytest.raises(segmentation.LabelError) as e:
    _datasets(_config(data_dir=str(tmp_path)))
  msg = str(e.value)
  assert '2007_000002.png' in msg and '[9]' in msg
  assert 'num_classes=10' in msg


def test_out_of_range_is_caught_on_the_fly(tmp_path):
  def bad(k, m):
    m = m.copy()
    if k == 3:
      m[5, 5] = 7
    return m
  _make_voc(str(tmp_path), mask_fn=bad)
  # Start-up scan of 1 file per split misses it; loading catches it.
  data = _datasets(_config(data_dir=str(tmp_path), label_check_files=1,
                           batch_size=8))
  with pytest.raises(segmentation.LabelError, match='2007_000003'):
    next(data.train_iter_fn(0))


def test_size_mismatch_names_the_file(tmp_path):
  def resize(k, m):
    return np.zeros((m.shape[0] + 3, m.shape[1]), np.uint8) if k == 9 else m
  _make_voc(str(tmp_path), mask_size_fn=resize)
  with pytest.raises(segmentation.LabelError,
                     match=r'2007_000009\.png: the mask is'):
    _datasets(_config(data_dir=str(tmp_path)))


def test_missing_split_file_lists_the_splits_found(tmp_path):
  _make_voc(str(tmp_path))
  with pytest.raises(segmentation.LabelError,
                     match=r"train_aug.txt not found.*\['train', 'val'\]"):
    _datasets(_config(data_dir=str(tmp_path), train_split='train_aug'))


def test_missing_mask_and_aug_folder_fallback(tmp_path):
  root = str(tmp_path)
  _make_voc(root)
  os.remove(os.path.join(root, 'SegmentationClass', '2007_000001.png'))
  with pytest.raises(segmentation.LabelError,
                     match=r"1 of the 8 ids of split 'train' have no mask"):
    voc.VocFolder(root, 'train')
  # With SegmentationClassAug holding every id, the train split uses it.
  _make_voc(root, mask_dir='SegmentationClassAug')
  source = voc.VocFolder(root, 'train')
  assert 'SegmentationClassAug' in source.name(1)
  assert 'SegmentationClassAug' not in voc.VocFolder(root, 'val').name(0)


def test_grayscale_rgb_masks_read_colour_masks_rejected(tmp_path):
  gray = np.array([[0, 1], [2, 255]], np.uint8)
  Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / 'gray.png')
  np.testing.assert_array_equal(voc.read_mask(str(tmp_path / 'gray.png')), gray)
  colour = np.zeros((2, 2, 3), np.uint8)
  colour[0, 0] = (128, 0, 0)
  Image.fromarray(colour).save(tmp_path / 'colour.png')
  with pytest.raises(segmentation.LabelError, match='colour'):
    voc.read_mask(str(tmp_path / 'colour.png'))


@pytest.mark.parametrize('policy', ['skip', 'stop'])
def test_corrupt_image_skip_or_stop(tmp_path, policy):
  root = str(tmp_path)
  _make_voc(root)
  for name in ('2007_000003', '2007_000010'):  # One train, one val image.
    with open(os.path.join(root, 'JPEGImages', name + '.jpg'), 'wb') as f:
      f.write(b'not a jpeg')
  config = _config(data_dir=root, on_bad_image=policy, label_check_files=1,
                   batch_size=8)
  if policy == 'stop':  # At start-up (eval headers) or on loading.
    with pytest.raises(segmentation.BadImageError, match='on_bad_image="skip"'):
      next(_train(config))
    return
  data = _datasets(config)
  batch = next(data.train_iter_fn(0))
  assert batch['image'].shape[0] == 8
  masks = np.concatenate([b['mask'] for b in data.eval_iter_fn()])
  assert masks.sum() == data.num_eval_examples - 1
  assert data.bad_images.count == 2
  assert any('2007_000003' in name for name in data.bad_images.files)


# ----------------------------------------------------------------------------
# Augmentation and batching.
# ----------------------------------------------------------------------------


def _reference_train_transform(image, label, rng, crop, scale_range):
  """Rescale everything, pad, crop, flip: what train_transform must equal."""
  h, w = label.shape
  scale = rng.uniform(*scale_range)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  y0 = int(rng.integers(0, max(nh, crop) - crop + 1))
  x0 = int(rng.integers(0, max(nw, crop) - crop + 1))
  flip = rng.random() < 0.5
  img = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
  rows = (2 * np.arange(nh) + 1) * h // (2 * nh)
  cols = (2 * np.arange(nw) + 1) * w // (2 * nw)
  lab = label[rows[:, None], cols]
  pil = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
  assert (pil == lab).mean() > 0.9  # Same convention, up to exact ties.
  img = data_lib.normalize(img)
  ph, pw = max(nh, crop) - nh, max(nw, crop) - nw
  img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
  lab = np.pad(lab.astype(np.int32), ((0, ph), (0, pw)), constant_values=255)
  img, lab = img[y0:y0 + crop, x0:x0 + crop], lab[y0:y0 + crop, x0:x0 + crop]
  if flip:
    img, lab = img[:, ::-1], lab[:, ::-1]
  return img, lab


def test_train_transform_matches_resize_pad_crop_flip():
  rng = np.random.default_rng(0)
  for k in range(12):
    h, w = int(rng.integers(10, 60)), int(rng.integers(10, 60))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, NUM_CLASSES, (h, w)).astype(np.uint8)
    out_image = np.zeros((32, 32, 3), np.float32)
    out_label = np.full((32, 32), 255, np.int32)
    seg_transforms.train_transform(image, label, np.random.default_rng(k),
                                   (32, 32), (0.5, 2.0), out_image, out_label)
    ref_image, ref_label = _reference_train_transform(
        image, label, np.random.default_rng(k), 32, (0.5, 2.0))
    np.testing.assert_array_equal(out_label, ref_label)
    # A decoded PIL image (what file sources hand over) gives the same bytes.
    pil_image = np.zeros_like(out_image)
    seg_transforms.train_transform(Image.fromarray(image), label,
                                   np.random.default_rng(k), (32, 32),
                                   (0.5, 2.0), pil_image, out_label.copy())
    np.testing.assert_array_equal(pil_image, out_image)
    # PIL may round a resampled pixel one level differently with a box.
    np.testing.assert_allclose(out_image, ref_image, atol=1.01 / (255 * 0.224))


def test_row_normalize_is_bit_identical():
  """data_lib.normalize_into's row path writes what the per-pixel broadcast
  (data_lib.normalize) gives, into windows of a slot and from flipped
  (strided) images."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
  for src in (image, image[:, ::-1], image[:5, 2:11]):
    h, w = src.shape[:2]
    fast = np.full((12, 16, 3), 7.0, np.float32)
    ref = fast.copy()
    data_lib.normalize_into(fast[1:1 + h, 3:3 + w], src)
    ref[1:1 + h, 3:3 + w] = data_lib.normalize(src)
    np.testing.assert_array_equal(fast, ref)  # Bits, and nothing outside.
    assert fast.tobytes() == ref.tobytes()


def test_padding_is_ignore_and_mean():
  image = np.full((10, 12, 3), 200, np.uint8)
  label = np.full((10, 12), 3, np.uint8)
  for seed in range(4):  # Both flip outcomes.
    out_image = np.zeros((20, 20, 3), np.float32)
    out_label = np.full((20, 20), 255, np.int32)
    seg_transforms.train_transform(image, label, np.random.default_rng(seed),
                                   (20, 20), (1.0, 1.0), out_image, out_label)
    assert (out_label == 3).sum() == 120 and (out_label == 255).sum() == 280
    np.testing.assert_array_equal(out_image[out_label == 255], 0.0)
    assert (out_label[10:] == 255).all()  # Padding at the bottom.


def _shapes_config(**kwargs):
  fields = dict(dataset='shapes_seg', image_size=24, shapes_train_size=20,
                shapes_eval_size=11, num_classes=4, crop_size=16, batch_size=4,
                eval_batch_size=4, data_workers=2, eval_pad_multiple=8)
  fields.update(kwargs)
  return _config(**fields)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_shapes_train_batches_crop_and_values():
  data = _datasets(_shapes_config(), seed=3)
  assert data.class_names[0] == 'background' and len(data.class_names) == 4
  for batch in _take(data.train_iter_fn(0), 3):
    assert batch['image'].shape == (4, 16, 16, 3)
    values = set(np.unique(batch['label']).tolist())
    assert values <= set(range(4)) | {255}


def test_start_step_resumes_exactly():
  config = _shapes_config()
  data = _datasets(config, seed=5)
  full = _take(data.train_iter_fn(0), 7)
  for resumed in (_take(data.train_iter_fn(4), 3),  # Built once.
                  _take(_train(config, 4, seed=5), 3)):
    for a, b in zip(full[4:], resumed, strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
  other_seed = next(_train(config, seed=6))
  assert not np.array_equal(other_seed['label'], full[0]['label'])


def test_two_processes_split_the_global_batch():
  config = _shapes_config()
  one = _take(_train(config, seed=1), 2)
  parts = [
      _take(_train(config, seed=1, process_index=p, process_count=2), 2)
      for p in range(2)
  ]
  for step in range(2):
    for key in ('image', 'label'):
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
      np.testing.assert_array_equal(joined, one[step][key])

  # Eval: 11 examples, global batch 4, 2 processes -> each counted once.
  eval_labels = []
  for p in range(2):
    data = _datasets(config, seed=1, process_index=p, process_count=2)
    batches = list(data.eval_iter_fn())
    assert len(batches) == 3
    eval_labels.append(batches)
  got = []
  for k in range(3):
    for p in range(2):
      b = eval_labels[p][k]
      assert b['image'].shape[0] == 2
      got.extend(b['label'][i, :24, :24] for i in np.flatnonzero(b['mask']))
  from jaxres.data import shapes  # pylint: disable=g-import-not-at-top
  _, want = shapes.make_segmentation(11, 24, data_lib.SHAPES_EVAL_SEED, 4)
  np.testing.assert_array_equal(np.stack(got), want)


# ----------------------------------------------------------------------------
# TFDS sources.
# ----------------------------------------------------------------------------


def test_cityscapes_label_ids_to_train_ids():
  ids = np.array([[7, 26, 0], [33, 24, 9]], np.uint8)
  np.testing.assert_array_equal(
      seg_tfds.map_cityscapes(ids, 'x'), [[0, 13, 255], [18, 11, 255]])
  assert (seg_tfds.CITYSCAPES_LUT < 19).sum() == 19
  assert len(seg_tfds.CITYSCAPES_CLASSES) == 19
  assert seg_tfds.CITYSCAPES_CLASSES[13] == 'car'


def test_pets_trimap_mapping():
  trimap = np.array([[1, 2, 3]], np.uint8)
  np.testing.assert_array_equal(
      seg_tfds.make_pets_mapper('ignore')(trimap, 'x'), [[1, 0, 255]])
  np.testing.assert_array_equal(
      seg_tfds.make_pets_mapper('class')(trimap, 'x'), [[1, 0, 2]])
  assert seg_tfds.pets_class_names('class') == ('background', 'pet', 'border')
  with pytest.raises(segmentation.LabelError, match='trimap'):
    seg_tfds.make_pets_mapper('ignore')(np.array([[0, 9]], np.uint8), 'x')


def _encode(array, fmt):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


def test_oxford_iiit_pet_with_mock_data():
  tf = pytest.importorskip('tensorflow')
  tfds = pytest.importorskip('tensorflow_datasets')
  num_examples = {'train': 6, 'test': 5}

  def as_dataset_fn(self, split, decoders=None, read_config=None, **kwargs):
    # tfds mock masks are random values at another size than their image;
    # make consistent trimaps instead (1 pet, 2 background, 3 border).
    del self, decoders, read_config, kwargs
    rng = np.random.default_rng(len(split))
    images, masks = [], []
    for _ in range(num_examples[split]):
      h, w = int(rng.integers(16, 30)), int(rng.integers(16, 30))
      images.append(_encode(rng.integers(0, 256, (h, w, 3), np.uint8), 'JPEG'))
      masks.append(_encode(rng.integers(1, 4, (h, w)).astype(np.uint8), 'PNG'))
    return tf.data.Dataset.from_tensor_slices(
        {'image': images, 'segmentation_mask': masks})

  config = _config(dataset='oxford_iiit_pet', num_classes=None, crop_size=16,
                   batch_size=2, eval_batch_size=4)
  with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
    data = _datasets(config)
  assert data.num_classes == 2 and data.class_names == ('background', 'pet')
  assert (data.num_train_examples, data.num_eval_examples) == (6, 5)
  batch = next(data.train_iter_fn(0))
  assert batch['image'].shape == (2, 16, 16, 3)
  assert set(np.unique(batch['label']).tolist()) <= {0, 1, 255}
  masks = np.concatenate([b['mask'] for b in data.eval_iter_fn()])
  assert masks.sum() == 5 and masks.shape == (8,)


def test_tfds_not_prepared_names_the_manual_dir(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  config = _config(dataset='cityscapes', num_classes=None,
                   data_dir=str(tmp_path))
  with pytest.raises(data_lib.DatasetNotFoundError,
                     match=r'downloads/manual.*tfds build cityscapes'):
    _datasets(config)
