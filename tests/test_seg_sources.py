"""Own segmentation folders (seg_folder.py) and ADE20K's layout (ade20k.py).

Tiny generated images (32x48) in tmp_path; one short training run end to end.
"""
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import segmentation_common
from configs import unet_own_folder
from jaxres import runner
from jaxres.data import ade20k
from jaxres.data import seg_folder
from jaxres.data import seg_labels
from jaxres.data import segmentation
from tests import helpers

H, W = 32, 48


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _example(rng, num_values):
  """An image and a mask whose left half is class 1 (learnable)."""
  image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  mask = rng.integers(0, num_values, (H, W)).astype(np.uint8)
  image[:, :W // 2] //= 4  # Dark where the mask says class 1.
  return image, mask


def _make_folder(root, stems, *, image_dir='Images', mask_dir='Labels',
                 image_ext='.png', mask_suffix='', values=(0, 1), seed=0):
  """Own-folder layout; returns {stem: mask}."""
  rng = np.random.default_rng(seed)
  masks = {}
  for stem in stems:
    image, _ = _example(rng, 2)
    mask = np.full((H, W), values[0], np.uint8)
    mask[:, :W // 2] = values[1]
    mask[rng.integers(0, H), :] = values[0]  # Not two identical halves.
    _save(os.path.join(root, image_dir, stem + image_ext), image)
    _save(os.path.join(root, mask_dir, stem + mask_suffix + '.png'), mask)
    masks[stem] = mask
  return masks


def _config(**kwargs):
  config = segmentation_common.segmentation_config()
  fields = dict(dataset='folder', num_classes=2, crop_size=24, batch_size=4,
                eval_batch_size=4, data_workers=2, eval_pad_multiple=8,
                label_check_files=50)
  fields.update(kwargs)
  for key, value in fields.items():
    config[key] = value
  return config


def _datasets(config, **kwargs):
  kwargs.setdefault('seed', 0)
  return segmentation.get_segmentation_datasets(config, **kwargs)


def _stem(path):
  return os.path.splitext(os.path.basename(path))[0]


STEMS = [f'img_{i:02d}' for i in range(20)]


# ----------------------------------------------------------------------------
# ADE20K.
# ----------------------------------------------------------------------------


def test_reduce_zero_label_mapping():
  mask = np.array([[0, 1, 2], [150, 254, 255]], np.uint8)
  np.testing.assert_array_equal(seg_labels.reduce_zero_label(mask),
                                [[255, 0, 1], [149, 253, 255]])


def test_ade20k_layout_pairs_and_reduces_zero_label(tmp_path):
  root = tmp_path / ade20k.FOLDER
  rng = np.random.default_rng(0)
  masks = {}
  for split, prefix, n in (('training', 'ADE_train', 6),
                           ('validation', 'ADE_val', 3)):
    for i in range(n, 0, -1):  # Written in reverse: order comes from stems.
      stem = f'{prefix}_{i:08d}'
      image, mask = _example(rng, 151)
      mask[0, :3] = (0, 1, 150)
      _save(str(root / 'images' / split / f'{stem}.jpg'), image)
      _save(str(root / 'annotations' / split / f'{stem}.png'), mask)
      masks[stem] = mask
  assert len(ade20k.CLASSES) == 150 and ade20k.CLASSES[:3] == (
      'wall', 'building', 'sky')
  config = _config(dataset='ade20k', num_classes=None, data_dir=str(tmp_path))
  train, evals = ade20k.sources(config, None, None)
  assert (len(train), len(evals)) == (6, 3)
  assert [_stem(p) for p in evals.mask_paths] == [
      f'ADE_val_{i:08d}' for i in (1, 2, 3)]
  for source in (train, evals):
    for i in range(len(source)):
      assert _stem(source.image_paths[i]) == _stem(source.mask_paths[i])
      raw = masks[_stem(source.mask_paths[i])]
      label = source.load_label(i)
      np.testing.assert_array_equal(label[raw == 0], 255)
      np.testing.assert_array_equal(label[raw > 0], raw[raw > 0] - 1)
      assert label[0, :3].tolist() == [255, 0, 149]

  data = _datasets(config)
  assert data.num_classes == 150 and data.class_names[7] == 'bed'
  labels = next(data.train_iter_fn(0))['label']
  assert labels.max() <= 255 and set(np.unique(labels)) - {255} <= set(
      range(150))
  # Wrong class count or the wrong folder: a message saying what to set.
  with pytest.raises(segmentation.LabelError, match='num_classes=150'):
    _datasets(_config(dataset='ade20k', num_classes=151,
                      data_dir=str(tmp_path)))
  with pytest.raises(segmentation.LabelError, match='eval_split'):
    _datasets(_config(dataset='ade20k', num_classes=None, eval_split='test',
                      data_dir=str(tmp_path)))
  with pytest.raises(segmentation.LabelError, match='ADEChallengeData2016'):
    _datasets(_config(dataset='ade20k', num_classes=None,
                      data_dir=str(root / 'images')))


# ----------------------------------------------------------------------------
# Own folders: pairing and splits.
# ----------------------------------------------------------------------------


def test_pairs_by_stem_and_fraction_split(tmp_path):
  masks = _make_folder(str(tmp_path), STEMS)
  config = _config(data_dir=str(tmp_path), val_fraction=0.25, split_seed=3)
  train, evals = seg_folder.folder_sources(config, None, None)
  train_stems = [_stem(p) for p in train.image_paths]
  eval_stems = [_stem(p) for p in evals.image_paths]
  for source in (train, evals):
    assert [_stem(p) for p in source.image_paths] == [
        _stem(p) for p in source.mask_paths]
    for i in range(len(source)):
      np.testing.assert_array_equal(source.load_label(i),
                                    masks[_stem(source.mask_paths[i])])
  # Disjoint, covering every pair, sorted, and the same every time.
  assert not set(train_stems) & set(eval_stems)
  assert sorted(train_stems + eval_stems) == STEMS
  assert train_stems == sorted(train_stems) and eval_stems
  again = seg_folder.folder_sources(config, None, None)
  assert [_stem(p) for p in again[1].image_paths] == eval_stems
  # A stem's split does not depend on the other files.
  os.remove(tmp_path / 'Images' / f'{train_stems[0]}.png')
  os.remove(tmp_path / 'Labels' / f'{train_stems[0]}.png')
  fewer = seg_folder.folder_sources(config, None, None)
  assert [_stem(p) for p in fewer[1].image_paths] == eval_stems
  other = _config(data_dir=str(tmp_path), val_fraction=0.25, split_seed=4)
  assert [_stem(p) for p in seg_folder.folder_sources(
      other, None, None)[1].image_paths] != eval_stems


def test_mask_suffix_and_jpg_images(tmp_path):
  _make_folder(str(tmp_path), STEMS[:6], image_dir='images',
               mask_dir='masks', image_ext='.jpg', mask_suffix='_mask')
  with pytest.raises(segmentation.LabelError) as e:
    seg_folder.folder_sources(_config(data_dir=str(tmp_path)), None, None)
  msg = str(e.value)
  assert '6 images in' in msg and 'img_00.jpg' in msg
  assert 'img_00_mask.png' in msg
  assert '--config.folder_mask_suffix=_mask' in msg
  config = _config(data_dir=str(tmp_path), folder_mask_suffix='_mask')
  train, evals = seg_folder.folder_sources(config, None, None)
  assert len(train) + len(evals) == 6
  assert all(p.endswith('_mask.png') for p in train.mask_paths)
  assert all(p.endswith('.jpg') for p in train.image_paths)


def test_masks_beside_images_with_suffix(tmp_path):
  _make_folder(str(tmp_path), STEMS[:5], image_dir='data', mask_dir='data',
               mask_suffix='_mask')
  config = _config(data_dir=str(tmp_path), folder_image_dir='data',
                   folder_mask_dir='data')
  with pytest.raises(segmentation.LabelError, match='folder_mask_suffix'):
    seg_folder.folder_sources(config, None, None)
  config.folder_mask_suffix = '_mask'
  train, evals = seg_folder.folder_sources(config, None, None)
  assert len(train) + len(evals) == 5


def test_split_files(tmp_path):
  _make_folder(str(tmp_path), STEMS[:8])
  split_dir = tmp_path / 'splits'
  split_dir.mkdir()
  (split_dir / 'train.txt').write_text('img_00\nimg_01.png\nimg_02\n\n')
  (split_dir / 'val.txt').write_text('img_05\nimg_03\n')
  config = _config(data_dir=str(tmp_path), folder_split_dir='splits')
  train, evals = seg_folder.folder_sources(config, None, None)
  assert [_stem(p) for p in train.image_paths] == ['img_00', 'img_01',
                                                   'img_02']
  assert [_stem(p) for p in evals.mask_paths] == ['img_05', 'img_03']
  (split_dir / 'val.txt').write_text('img_05\nimg_99\n')
  with pytest.raises(segmentation.LabelError, match='img_99 .no image'):
    seg_folder.folder_sources(config, None, None)
  config.folder_skip_unpaired = True
  assert len(seg_folder.folder_sources(config, None, None)[1]) == 1
  with pytest.raises(segmentation.LabelError, match='test.txt not found'):
    seg_folder.folder_sources(config, None, 'test')


def test_per_split_folders_are_detected(tmp_path):
  _make_folder(str(tmp_path), STEMS[:4], image_dir='img_dir/train',
               mask_dir='ann_dir/train')
  _make_folder(str(tmp_path), STEMS[4:6], image_dir='img_dir/val',
               mask_dir='ann_dir/val')
  train, evals = seg_folder.folder_sources(_config(data_dir=str(tmp_path)),
                                           None, None)
  assert (len(train), len(evals)) == (4, 2)


def test_unpaired_files_error_or_skip_with_count(tmp_path, caplog):
  _make_folder(str(tmp_path), STEMS[:6])
  os.remove(tmp_path / 'Labels' / 'img_02.png')
  _save(str(tmp_path / 'Labels' / 'stray.png'), np.zeros((H, W), np.uint8))
  config = _config(data_dir=str(tmp_path))
  with pytest.raises(segmentation.LabelError) as e:
    seg_folder.folder_sources(config, None, None)
  msg = str(e.value)
  assert '1 images in' in msg and 'img_02.png' in msg
  assert '1 masks in' in msg and 'stray.png' in msg
  assert 'folder_skip_unpaired=True' in msg
  config.folder_skip_unpaired = True
  with caplog.at_level('WARNING'):
    train, evals = seg_folder.folder_sources(config, None, None)
  assert len(train) + len(evals) == 5
  assert 'Left out 1 images without a mask and 1 masks' in caplog.text
  # No folder found: the folders that are there and the field to set.
  with pytest.raises(segmentation.LabelError, match='folder_image_dir'):
    seg_folder.folder_sources(_config(data_dir=str(tmp_path),
                                      folder_image_dir='pics'), None, None)


def test_two_class_0_255_masks_say_what_to_set(tmp_path):
  _make_folder(str(tmp_path), STEMS[:8], values=(0, 255))
  config = _config(data_dir=str(tmp_path), val_fraction=0.3)
  with pytest.raises(segmentation.LabelError) as e:
    _datasets(config)
  assert '--config.binary_mask_255_to_1=True --config.num_classes=2' in str(
      e.value)
  config.binary_mask_255_to_1 = True
  data = _datasets(config)
  assert data.class_names == ('background', 'foreground')
  labels = next(data.train_iter_fn(0))['label']
  assert set(np.unique(labels)) <= {0, 1, 255} and (labels == 1).any()
  evals = [b['label'][i] for b in data.eval_iter_fn()
           for i in np.flatnonzero(b['mask'])]
  assert all(set(np.unique(e)) <= {0, 1, 255} for e in evals)


def test_training_order_is_independent_of_process_count(tmp_path):
  _make_folder(str(tmp_path), STEMS)
  config = _config(data_dir=str(tmp_path))
  one = _datasets(config, seed=1).train_iter_fn(3)
  parts = [_datasets(config, seed=1, process_index=p,
                     process_count=2).train_iter_fn(3) for p in range(2)]
  for _ in range(2):
    whole = next(one)
    halves = [next(p) for p in parts]
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([h[key] for h in halves]), whole[key])


def test_mmseg_configs_follow_the_recipe():
  from configs import deeplabv3plus_resnet101_cityscapes as cityscapes  # pylint: disable=g-import-not-at-top
  from configs import deeplabv3plus_resnet50_ade20k as ade  # pylint: disable=g-import-not-at-top
  from configs import deeplabv3plus_resnet101_voc as voc  # pylint: disable=g-import-not-at-top
  c = cityscapes.get_config()
  assert c.crop_size == (512, 1024) and c.num_train_steps == 80_000
  assert (c.batch_size, c.lr_base_batch_size) == (8, 8)
  assert (c.inference, c.slide_crop, c.slide_stride) == (
      'slide', (512, 1024), (341, 682))
  assert c.model_kwargs.output_stride == 8 and c.aux_loss_weight == 0.4
  c = ade.get_config('160k')
  assert (c.dataset, c.num_classes, c.reduce_zero_label) == ('ade20k', 150,
                                                             True)
  assert c.num_train_steps == 160_000 and c.weight_decay == 5e-4
  c = voc.get_config('40k')
  assert c.model == 'deeplabv3plus_resnet101' and c.num_train_steps == 40_000


# ----------------------------------------------------------------------------
# End to end.
# ----------------------------------------------------------------------------


def _tiny_run_config(data_dir, **overrides):
  c = unet_own_folder.get_config()
  c.unlock()
  c.data_dir = data_dir
  c.model = 'unet_vgg16'
  c.model_kwargs = ml_collections.ConfigDict(
      {'backbone_width': 4, 'decoder_filters': (8, 8, 8, 8),
       'align_corners': True})
  c.crop_size = 32
  c.batch_size = 8
  c.eval_batch_size = 8
  c.learning_rate = 3e-3
  c.num_train_epochs = None
  c.num_train_steps = 4
  c.warmup_epochs = None
  c.warmup_steps = 1
  c.log_every_steps = 2
  c.eval_every_epochs = None
  c.eval_every_steps = 4
  c.checkpoint_every_epochs = None
  c.checkpoint_every_steps = 4
  c.num_eval_images = 1
  c.data_workers = 2
  c.compilation_cache_dir = helpers.xla_cache_dir()
  c.freeze_backbone_epochs = None
  for k, v in overrides.items():
    setattr(c, k, v)
  c.lock()
  return c


def _nothing_written(workdir):
  return not os.path.exists(workdir) or not os.listdir(workdir)


def test_own_folder_trains_end_to_end(tmp_path, capsys):
  data_dir = str(tmp_path / 'data')
  _make_folder(data_dir, STEMS, values=(0, 255))
  before = {d: sorted(os.listdir(os.path.join(data_dir, d)))
            for d in ('Images', 'Labels')}
  # 0/255 masks as they are: exit 2 naming the option, nothing written.
  with pytest.raises(SystemExit) as e:
    runner.run(_tiny_run_config(data_dir), str(tmp_path / 'run0'))
  assert e.value.code == 2
  assert '--config.binary_mask_255_to_1=True' in capsys.readouterr().err
  assert _nothing_written(tmp_path / 'run0')

  config = _tiny_run_config(data_dir, binary_mask_255_to_1=True)
  metrics = runner.run(config, str(tmp_path / 'run'))
  _, evals = seg_folder.folder_sources(config, None, None)
  assert metrics['eval_examples'] == len(evals)
  assert 0 <= metrics['eval_miou'] <= 1

  # Unpaired files: exit 2 with the list, data and workdir untouched.
  os.remove(os.path.join(data_dir, 'Labels', 'img_04.png'))
  with pytest.raises(SystemExit) as e:
    runner.run(config, str(tmp_path / 'run2'))
  assert e.value.code == 2
  assert 'img_04.png' in capsys.readouterr().err
  assert _nothing_written(tmp_path / 'run2')
  before['Labels'].remove('img_04.png')
  assert before == {d: sorted(os.listdir(os.path.join(data_dir, d)))
                    for d in ('Images', 'Labels')}
