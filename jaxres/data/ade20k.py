"""ADE20K (SceneParsing, 150 classes) in its released folder layout.

  <data_dir>/images/training/ADE_train_00000001.jpg       20,210 images
  <data_dir>/images/validation/ADE_val_00000001.jpg        2,000 images
  <data_dir>/annotations/{training,validation}/<same stem>.png

data_dir is the unzipped ADEChallengeData2016 folder (or the folder holding
it). Annotations store the 150 classes as 1..150 and "other" (unlabelled) as
0; they are read with reduce_zero_label, as mmsegmentation's ADE20KDataset
does: 0 becomes the ignore label 255 and class k becomes k - 1, so the model
has 150 outputs. Pairing, the bad-file policy and batching are those of own
folders (seg_folder.py); config.train_split / eval_split default to
'training' / 'validation' ('train' / 'val' mean the same).
"""
import os
from typing import Optional

from jaxres.data import seg_folder
from jaxres.data.errors import FolderLayoutError

FOLDER = 'ADEChallengeData2016'
SPLITS = {'train': 'training', 'val': 'validation'}

# objectInfo150 order (as in mmsegmentation's ADE20KDataset): index = the
# annotation value - 1.
CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed',
    'windowpane', 'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door',
    'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub',
    'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
    'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill',
    'bench', 'countertop', 'stove', 'palm', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth',
    'television receiver', 'airplane', 'dirt track', 'apparel', 'pole', 'land',
    'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage',
    'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
    'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall',
    'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step',
    'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake',
    'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase',
    'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate',
    'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock',
    'flag')
NUM_CLASSES = len(CLASSES)


def find_root(data_dir: Optional[str]) -> str:
  """The folder holding images/ and annotations/ (data_dir or data_dir/FOLDER)."""
  layout = (f'Expected the ADE20K release layout: {FOLDER}/images/'
            f'{{training,validation}}/*.jpg and {FOLDER}/annotations/'
            '{training,validation}/*.png. Set config.data_dir to the '
            f'{FOLDER} folder.')
  if not data_dir or not os.path.isdir(data_dir):
    raise FolderLayoutError(f'config.data_dir={data_dir!r} is not a folder. '
                            + layout)
  for root in (data_dir, os.path.join(data_dir, FOLDER)):
    if all(os.path.isdir(os.path.join(root, d))
           for d in ('images', 'annotations')):
      return root
  raise FolderLayoutError(f'No images/ and annotations/ folders in '
                          f'{data_dir}. {layout}')


def sources(config, train_split: Optional[str], eval_split: Optional[str],
            reduce_zero_label: bool = True):
  """(train, eval) seg_folder.PairedFiles of the ADE20K folder."""
  splits = [SPLITS.get(s, s) for s in (train_split or 'training',
                                       eval_split or 'validation')]
  root = find_root(config.data_dir)
  for split in splits:
    for kind in ('images', 'annotations'):
      if not os.path.isdir(os.path.join(root, kind, split)):
        found = sorted(os.listdir(os.path.join(root, kind)))
        raise FolderLayoutError(
            f'{os.path.join(root, kind, split)} is not a folder (folders in '
            f'{kind}/: {found}). Set config.train_split / config.eval_split '
            'to one of them.')
  return seg_folder.folder_sources(
      config, *splits, reduce_zero_label=reduce_zero_label,
      root=root, image_dir=f'images/{seg_folder.SPLIT}',
      mask_dir=f'annotations/{seg_folder.SPLIT}', image_exts='.jpg',
      mask_exts='.png')
