r"""Imports PyTorch weights into jaxres checkpoints.

    python -m jaxres.convert --model=resnet50 --num_classes=1000 \
        --input=resnet50-0676ba61.pth --output=/tmp/resnet50_tv

reads a state dict (``.pth``/``.pt``/``.bin``/``.tar`` through
``torch.load(weights_only=True)``, or ``.safetensors``), maps it onto the
variables of the named jaxres model and writes an Orbax checkpoint of
``{'params', 'batch_stats'}`` plus ``jaxres_model.json`` into ``--output``
(which must not exist yet). ``load_pretrained`` is what the trainers'
``init_from`` calls; it takes a torch file or a jaxres checkpoint directory.

The mapping is built by walking the flax variable tree of the model and
translating each flax path into the torch key it must come from, so every
flax variable is accounted for and every left-over torch key is reported.
Supported source layouts (detected from the keys):

- torchvision ``resnet*``/``wide_resnet50_2``/``resnext50_32x4d``,
  ``mobilenet_v2``, ``vgg16``;
- bubbliiiing/unet-pytorch ``Unet`` (``resnet.*`` or ``vgg.*`` encoder);
- bubbliiiing/deeplabv3-plus-pytorch ``DeepLab(backbone='mobilenet')``
  (``backbone.features.N.conv.M``) and its ImageNet MobileNetV2 file;
- for ``backbone_only``: any of the classification files above as the
  encoder of a segmentation model.

Tensor layouts: conv OIHW -> HWIO (depthwise (C, 1, kh, kw) -> (kh, kw, 1, C)),
linear ``weight.T``, BatchNorm ``weight``/``bias`` -> params ``scale``/``bias``
and ``running_mean``/``running_var`` -> batch_stats ``mean``/``var``;
``num_batches_tracked`` is dropped.
"""
import argparse
import importlib.util
import dataclasses
import fnmatch
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

METADATA_FILE = 'jaxres_model.json'
VARIABLES_DIR = 'variables'
FORMAT = 'jaxres-converted-v1'
COLLECTIONS = ('params', 'batch_stats')

# Keys a training script wraps a state dict in ({'state_dict': sd, 'epoch': 3}).
_NESTING_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'network',
                 'weights', 'params')
# Last layers of classification models: with backbone_only they stay fresh.
_CLASSIFIER_MODULES = ('fc', 'classifier_1', 'classifier_6')
_HEAD_MODULES = _CLASSIFIER_MODULES + ('final', 'cls_conv')


class ConvertError(ValueError):
  """A weight file cannot be imported; the message says why and what to do."""


Path = Tuple[str, ...]
StateDict = Dict[str, np.ndarray]

# --------------------------------------------------------------------------
# Reading torch files
# --------------------------------------------------------------------------


def _to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach().cpu()
  if tensor.is_floating_point() and tensor.dtype != torch.float64:
    tensor = tensor.float()  # bf16/fp16 checkpoints: numpy has no bfloat16
  return tensor.numpy()


def _torch_load(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConvertError(
        f'Reading {path} needs PyTorch (pip install torch), or convert the '
        'file to .safetensors elsewhere.') from e
  import pickle  # pylint: disable=g-import-not-at-top
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    found = re.findall(r'GLOBAL ([\w.]+)', str(e))
    what = f' (it references {", ".join(sorted(set(found)))})' if found else ''
    raise ConvertError(
        f'Refusing {path}: loading it needs arbitrary-code unpickling{what}. '
        'jaxres only reads plain state dicts with torch.load(weights_only=True).'
        ' This usually means a whole model or training object was pickled '
        '(torch.save(model)). In an environment you trust, re-save just the '
        'weights: torch.save(model.state_dict(), "weights.pth"), or convert '
        'them to .safetensors.') from e
  except Exception as e:  # zip/pickle corruption, wrong file type, ...
    raise ConvertError(
        f'Could not read {path} as a PyTorch file: {type(e).__name__}: {e}') from e


def _read_safetensors(path: str) -> Dict[str, Any]:
  try:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConvertError(
        f'Reading {path} needs the safetensors package '
        '(pip install safetensors).') from e
  try:
    # torch reads bfloat16 tensors, numpy cannot.
    framework = 'pt' if importlib.util.find_spec('torch') else 'np'
    with safe_open(path, framework=framework) as f:
      return {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:
    raise ConvertError(
        f'Could not read {path} as safetensors: {type(e).__name__}: {e}') from e


def _is_tensor(x) -> bool:
  if isinstance(x, np.ndarray):
    return True
  return type(x).__module__.startswith('torch') and hasattr(x, 'detach')


def read_state_dict(path: str) -> Tuple[StateDict, List[str]]:
  """Reads a state dict as {key: numpy array} plus notes on what was unwrapped.

  Refuses files that are not a mapping of names to tensors. Common wrappers
  are unwrapped ({'state_dict': ...}, {'model': ...}, ...; other entries such
  as 'epoch' or 'optimizer' are skipped) and a 'module.' prefix left by
  DataParallel is stripped; each is reported in the notes.
  """
  if not os.path.isfile(path):
    raise ConvertError(f'No such file: {path}')
  notes = []
  if path.endswith('.safetensors'):
    obj = _read_safetensors(path)
  else:
    obj = _torch_load(path)
  if _is_tensor(obj) or not isinstance(obj, Mapping):
    raise ConvertError(
        f'{path} holds a {type(obj).__name__}, not a state dict (a mapping of '
        'parameter names to tensors). Save model.state_dict().')
  for _ in range(3):
    nested = [k for k in _NESTING_KEYS
              if isinstance(obj.get(k), Mapping) and obj.get(k)]
    if not nested or all(_is_tensor(v) for v in obj.values()):
      break
    key = nested[0]
    skipped = sorted(str(k) for k in obj if k != key)
    notes.append(f'using the state dict nested under {key!r}' +
                 (f'; skipped top-level entries {skipped}' if skipped else ''))
    obj = obj[key]
  bad = sorted(str(k) for k, v in obj.items() if not _is_tensor(v))
  if bad:
    raise ConvertError(
        f'{path} is not a state dict: entries {bad[:10]}'
        f'{" ..." if len(bad) > 10 else ""} are not tensors. Top-level keys: '
        f'{sorted(str(k) for k in obj)[:10]}. Save model.state_dict().')
  if not obj:
    raise ConvertError(f'{path} holds an empty state dict.')
  state = {str(k): _to_numpy(v) if not isinstance(v, np.ndarray) else v
           for k, v in obj.items()}
  for prefix in ('module.', '_orig_mod.'):  # DataParallel, torch.compile
    if all(k.startswith(prefix) for k in state):
      state = {k[len(prefix):]: v for k, v in state.items()}
      notes.append(f'stripped the {prefix!r} prefix from every key')
  return state, notes


# --------------------------------------------------------------------------
# flax path -> torch key
# --------------------------------------------------------------------------
#
# A flax module path becomes a dotted torch module name by turning '/' and
# '_<number>' into '.<number>' (layer1_0/conv1 -> layer1.0.conv1,
# features_0_0 -> features.0.0, aspp/conv_cat_0 -> aspp.conv_cat.0); the
# per-layout functions below fix what that generic rule cannot express.


def _generic_name(path: Path) -> str:
  return '.'.join(re.sub(r'_(\d+)(?=_|$)', r'.\1', p) for p in path)


def _resnet_name(path: Path, kind: str) -> str:
  del kind
  name = _generic_name(path)
  name = re.sub(r'\.downsample_conv$', '.downsample.0', name)
  return re.sub(r'\.downsample_bn$', '.downsample.1', name)


def _tv_mobilenet_name(path: Path, kind: str) -> str:
  del kind
  return _generic_name(path)


def _bb_mobilenet_name(path: Path, kind: str) -> str:
  """bubbliiiing MobileNetV2: each block's ``conv`` is one flat Sequential.

  torchvision nests conv+BN+ReLU6 triples (conv.I.J, I < number of triples)
  and then lists the linear projection conv and its BN (conv.I). Flat index:
  3 * I + J for a triple; 3 * I for the projection conv and 3 * I - 2 for
  its BN (the projection conv's I equals the number of triples).
  """
  name = _generic_name(path)
  match = re.fullmatch(r'(.*features\.\d+\.conv)\.(\d+)(?:\.(\d+))?', name)
  if not match:
    return name
  base, i, j = match.group(1), int(match.group(2)), match.group(3)
  if j is not None:
    flat = 3 * i + int(j)
  else:
    flat = 3 * i if kind == 'conv' else 3 * i - 2
  return f'{base}.{flat}'


def _vgg_name(path: Path, kind: str) -> str:
  del kind
  return _generic_name(path)


def _head_name(path: Path, kind: str) -> str:
  del kind
  return _generic_name(path)


@dataclasses.dataclass(frozen=True)
class Layout:
  """One way a backbone's weights are named in PyTorch."""
  description: str
  prefix: str  # torch key prefix of the backbone
  module_name: Callable[[Path, str], str]
  # Keys of the source's own classifier: allowed left-overs with backbone_only.
  classifier_keys: Tuple[str, ...] = ()


_LAYOUTS = {
    'resnet': (
        Layout('torchvision ResNet', '', _resnet_name, ('fc.*',)),
        Layout('bubbliiiing UNet ResNet encoder', 'resnet.', _resnet_name),
        Layout('DeepLab-style ResNet backbone', 'backbone.', _resnet_name),
    ),
    'mobilenet_v2': (
        Layout('torchvision MobileNetV2', '', _tv_mobilenet_name,
               ('features.18.*', 'classifier.*')),
        Layout('bubbliiiing DeepLabV3+ MobileNetV2 backbone', 'backbone.',
               _bb_mobilenet_name),
        Layout('bubbliiiing MobileNetV2 (ImageNet)', '', _bb_mobilenet_name,
               ('features.18.*', 'classifier.*')),
        Layout('torchvision-layout MobileNetV2 backbone', 'backbone.',
               _tv_mobilenet_name),
    ),
    'vgg': (
        Layout('torchvision VGG', '', _vgg_name, ('classifier.*',)),
        Layout('bubbliiiing UNet VGG16 encoder', 'vgg.', _vgg_name),
    ),
}


def backbone_family(tree: Mapping[str, Any]) -> str:
  """Which backbone a (sub)tree of flax params is, from its module names."""
  names = set(tree)
  if 'layer1_0' in names:
    return 'resnet'
  if 'features_1' in names and isinstance(tree['features_1'], Mapping) and (
      any(k.startswith('conv_') for k in tree['features_1'])):
    return 'mobilenet_v2'
  if 'features_0' in names:
    return 'vgg'
  raise ConvertError(
      'Cannot tell which backbone these flax variables belong to (top-level '
      f'modules: {sorted(names)[:12]}); jaxres.convert knows ResNet, '
      'MobileNetV2 and VGG.')


# --------------------------------------------------------------------------
# Building and applying the mapping
# --------------------------------------------------------------------------

_TORCH_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


@dataclasses.dataclass
class Entry:
  collection: str
  path: Path          # flax path inside the collection, leaf name last
  torch_key: str
  shape: Tuple[int, ...]
  in_backbone: bool

  @property
  def flax_name(self) -> str:
    return '/'.join((self.collection,) + self.path)


def _flatten(tree: Mapping[str, Any], prefix: Path = ()) -> Dict[Path, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def _unflatten(flat: Mapping[Path, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return tree


def _as_dict(variables) -> Dict[str, Any]:
  try:
    from flax.core import unfreeze  # pylint: disable=g-import-not-at-top
    variables = unfreeze(variables)
  except ImportError:
    pass
  return {c: variables[c] for c in COLLECTIONS if c in variables}


def _module_kinds(flat: Mapping[Tuple[str, Path], Any]) -> Dict[Path, str]:
  kinds: Dict[Path, str] = {}
  for (collection, path), _ in flat.items():
    if collection == 'params' and path[-1] == 'kernel':
      kinds[path[:-1]] = 'conv'
  for (collection, path), _ in flat.items():
    kinds.setdefault(path[:-1], 'norm')
  return kinds


def _entries(target: Mapping[str, Any], layout: Layout,
             is_segmentation: bool) -> List[Entry]:
  """The torch key every flax variable of ``target`` comes from."""
  flat = {}
  for collection in COLLECTIONS:
    for path, leaf in _flatten(target.get(collection, {})).items():
      flat[(collection, path)] = leaf
  kinds = _module_kinds(flat)
  entries = []
  for (collection, path), leaf in flat.items():
    module, leaf_name = path[:-1], path[-1]
    torch_leaf = _TORCH_LEAF.get((collection, leaf_name))
    if torch_leaf is None:
      raise ConvertError(
          f'No PyTorch counterpart known for flax variable '
          f'{collection}/{"/".join(path)}.')
    kind = kinds[module]
    if is_segmentation and module[0] == 'backbone':
      in_backbone = True
      name = layout.prefix + layout.module_name(module[1:], kind)
    elif is_segmentation:
      in_backbone = False
      name = _head_name(module, kind)
    else:
      in_backbone = module[0] not in _CLASSIFIER_MODULES
      name = layout.prefix + layout.module_name(module, kind)
    entries.append(Entry(collection, path, f'{name}.{torch_leaf}',
                         tuple(np.shape(leaf)), in_backbone))
  return entries


def _to_flax(entry: Entry, w: np.ndarray) -> np.ndarray:
  if entry.path[-1] != 'kernel':
    return w
  if w.ndim == 4:  # conv OIHW -> HWIO; depthwise (C,1,kh,kw) -> (kh,kw,1,C)
    return w.transpose(2, 3, 1, 0)
  if w.ndim == 2:
    if (entry.path[-2] == 'classifier_0' and len(entry.shape) == 2 and
        entry.shape[0] == w.shape[1] and w.shape[1] % 49 == 0):
      # torchvision VGG flattens (C, 7, 7); jaxres flattens NHWC (7, 7, C).
      out, c = w.shape[0], w.shape[1] // 49
      return w.reshape(out, c, 7, 7).transpose(2, 3, 1, 0).reshape(-1, out)
    return w.T
  return w


def _flax_shape_in_torch(entry: Entry) -> Tuple[int, ...]:
  s = entry.shape
  if entry.path[-1] == 'kernel' and len(s) == 4:
    return (s[3], s[2], s[0], s[1])
  if entry.path[-1] == 'kernel' and len(s) == 2:
    return (s[1], s[0])
  return s


def _mismatch_cause(entry: Entry, got: Tuple[int, ...],
                    want: Tuple[int, ...]) -> str:
  module = entry.path[-2] if len(entry.path) > 1 else ''
  if module in _HEAD_MODULES and got and want and got[0] != want[0]:
    return (f'likely num_classes: the checkpoint has {got[0]} classes and the '
            f'model {want[0]}. Build the model with num_classes={got[0]}, or '
            'load only the backbone (backbone_only / --backbone_only) to '
            'train a fresh head.')
  if entry.path[-1] == 'kernel' and len(got) == 4 and got[2:] != want[2:]:
    return 'kernel sizes differ: a different architecture or --model.'
  return ('channel counts differ: a different model variant (depth, width, '
          'width_mult, groups) or the wrong --model.')


def _matches(key: str, patterns: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _choose_layout(family: str, entries_for: Callable[[Layout], List[Entry]],
                   state: StateDict, is_segmentation: bool,
                   backbone_only: bool) -> Tuple[Layout, List[Entry]]:
  best = None
  for layout in _LAYOUTS[family]:
    if not is_segmentation and layout.prefix and not backbone_only:
      continue  # a whole classifier comes from a classification file
    entries = entries_for(layout)
    score = sum(e.torch_key in state for e in entries if e.in_backbone)
    if best is None or score > best[0]:
      best = (score, layout, entries)
  assert best is not None
  return best[1], best[2]


@dataclasses.dataclass
class ConversionReport:
  layout: str
  loaded: List[str]                 # flax names filled from the file
  kept: List[str]                   # flax names left as initialised
  ignored: List[str]                # torch keys deliberately not used
  notes: List[str]

  def summary(self) -> str:
    lines = [f'source layout: {self.layout}',
             f'loaded {len(self.loaded)} variables from the file']
    if self.kept:
      lines.append(f'kept {len(self.kept)} freshly initialised: '
                   + ', '.join(self.kept[:8]) + (' ...' if len(self.kept) > 8 else ''))
    if self.ignored:
      lines.append(f'not used from the file ({len(self.ignored)}): '
                   + ', '.join(self.ignored[:8])
                   + (' ...' if len(self.ignored) > 8 else ''))
    lines += self.notes
    return '\n'.join(lines)


def convert_state_dict(
    state: StateDict, target_variables: Mapping[str, Any], *,
    backbone_only: bool = False,
    allow_missing: Sequence[str] = (),
    allow_unexpected: Sequence[str] = (),
) -> Tuple[Dict[str, Any], ConversionReport]:
  """Maps a torch state dict onto ``target_variables`` (arrays or shapes).

  Returns new variables with the same tree as the target: every leaf comes
  from the state dict, except - with ``backbone_only`` - those outside the
  backbone (segmentation head, classifier), and those whose torch key
  matches an ``allow_missing`` pattern; those keep the target's value (a
  ``jax.ShapeDtypeStruct`` target cannot keep values, so there they must be
  present). Raises ConvertError naming every missing key, every unused torch
  key (unless it matches ``allow_unexpected``) and every shape mismatch.
  """
  target = _as_dict(target_variables)
  if 'params' not in target:
    raise ConvertError("Target variables have no 'params' collection.")
  params = target['params']
  is_segmentation = 'backbone' in params
  family = backbone_family(params['backbone'] if is_segmentation else params)
  layout, entries = _choose_layout(
      family, lambda l: _entries(target, l, is_segmentation), state,
      is_segmentation, backbone_only)

  wanted = [e for e in entries if e.in_backbone or not backbone_only]
  consumed = {e.torch_key for e in wanted}
  # The target's own head keys, when only its backbone is loaded.
  head_keys = {e.torch_key for e in entries} - consumed
  problems, missing, kept, flat_out = [], [], [], {}
  missing_in_backbone = 0
  target_flat = {(c, p): v for c in COLLECTIONS
                 for p, v in _flatten(target.get(c, {})).items()}
  for e in entries:
    target_leaf = target_flat[(e.collection, e.path)]
    if backbone_only and not e.in_backbone:
      kept.append(e.flax_name)
      flat_out[(e.collection, e.path)] = target_leaf
      continue
    if e.torch_key not in state:
      if _matches(e.torch_key, allow_missing):
        kept.append(e.flax_name)
        flat_out[(e.collection, e.path)] = target_leaf
      else:
        missing.append(f'{e.torch_key} (for {e.flax_name}, shape '
                       f'{_flax_shape_in_torch(e)})')
        missing_in_backbone += e.in_backbone
      continue
    w = np.asarray(state[e.torch_key])
    value = _to_flax(e, w)
    if tuple(value.shape) != e.shape:
      want = _flax_shape_in_torch(e)
      problems.append(
          f'shape mismatch for {e.torch_key}: checkpoint {tuple(w.shape)}, '
          f'model {want} (flax {e.flax_name} {e.shape}); '
          + _mismatch_cause(e, tuple(w.shape), want))
      continue
    dtype = getattr(target_leaf, 'dtype', np.float32)
    flat_out[(e.collection, e.path)] = value.astype(dtype)

  ignored, unexpected = [], []
  for key in sorted(state):
    if key in consumed or key.endswith('num_batches_tracked'):
      continue
    if _matches(key, allow_unexpected):
      ignored.append(key)
    elif backbone_only and (
        (layout.prefix and not key.startswith(layout.prefix)) or
        _matches(key, layout.classifier_keys) or key in head_keys):
      ignored.append(key)  # head / classifier of the source model
    else:
      unexpected.append(key)

  if missing or unexpected or problems:
    msg = [f'Cannot load the state dict into this model (best matching '
           f'source layout: {layout.description}).']
    if missing and not missing_in_backbone and not backbone_only:
      msg.append('The file covers the backbone but not the head: load it '
                 'with backbone_only=True (--backbone_only, '
                 'config.init_backbone_only) to keep a fresh head.')
    if missing:
      msg.append(f'{len(missing)} missing key(s): ' + '; '.join(missing))
    if unexpected:
      msg.append(f'{len(unexpected)} unexpected key(s): ' + ', '.join(unexpected))
    msg.extend(problems)
    raise ConvertError('\n'.join(msg))

  variables = _unflatten({(c,) + p: v for (c, p), v in flat_out.items()})
  report = ConversionReport(
      layout=layout.description,
      loaded=sorted(set(e.flax_name for e in wanted) - set(kept)),
      kept=kept, ignored=ignored, notes=[])
  if layout.prefix == 'resnet.' and not backbone_only:
    report.notes.append(
        "note: bubbliiiing's UNet pools its stem with padding 0 and ceil_mode; "
        "build unet_resnet50 with backbone_stem='ceil_pool' to reproduce its "
        'outputs exactly.')
  return variables, report


# --------------------------------------------------------------------------
# jaxres checkpoints
# --------------------------------------------------------------------------


def model_variables_shape(model_name: str, num_classes: Optional[int],
                          image_size: int = 64, **model_kwargs):
  """(model, variable shapes) without allocating weights."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxres import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(model_name, num_classes=num_classes, **model_kwargs)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  return model, _as_dict(shapes)


def save_converted(output_dir: str, variables: Mapping[str, Any],
                   metadata: Mapping[str, Any]) -> None:
  """Writes an Orbax checkpoint of variables + metadata JSON; never overwrites."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir):
    raise ConvertError(f'Refusing to overwrite existing output {output_dir}.')
  os.makedirs(output_dir)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(output_dir, VARIABLES_DIR),
             {c: variables[c] for c in COLLECTIONS if c in variables})
  ckptr.wait_until_finished()
  with open(os.path.join(output_dir, METADATA_FILE), 'w') as f:
    json.dump(dict(metadata, format=FORMAT), f, indent=2, sort_keys=True)


def _restore_tree(path: str) -> Dict[str, Any]:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.PyTreeCheckpointer().restore(os.path.abspath(path))


def _find_variables(tree: Any) -> Optional[Dict[str, Any]]:
  """{'params', 'batch_stats'} from a restored tree (TrainState-like or not)."""
  if isinstance(tree, Mapping):
    if 'params' in tree:
      out = {'params': tree['params']}
      if isinstance(tree.get('batch_stats'), Mapping):
        out['batch_stats'] = tree['batch_stats']
      return out
    for v in tree.values():
      found = _find_variables(v)
      if found is not None:
        return found
  return None


def read_jaxres_checkpoint(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(variables, metadata) from a converted dir or a training checkpoint dir.

  Training checkpoints: an Orbax CheckpointManager directory (latest numeric
  step is used), one step directory, or one item directory whose tree holds
  'params' (and 'batch_stats').
  """
  path = os.path.abspath(path)
  meta_file = os.path.join(path, METADATA_FILE)
  if os.path.exists(meta_file):
    with open(meta_file) as f:
      meta = json.load(f)
    return _as_dict(_restore_tree(os.path.join(path, VARIABLES_DIR))), meta
  if os.path.isdir(os.path.join(path, 'checkpoints')):  # a training workdir
    path = os.path.join(path, 'checkpoints')
  candidates = [path]
  steps = sorted((int(d) for d in os.listdir(path) if d.isdigit()
                  and os.path.isdir(os.path.join(path, d))), reverse=True)
  if steps:
    candidates = [os.path.join(path, str(steps[0]))]
  for cand in list(candidates):
    candidates += sorted(
        os.path.join(cand, d) for d in os.listdir(cand)
        if os.path.isdir(os.path.join(cand, d)) and d != 'd'
        and not d.startswith(('_', '.', 'ocdbt')))
  errors = []
  for cand in candidates:
    if not os.path.exists(os.path.join(cand, '_METADATA')):
      continue
    try:
      found = _find_variables(_restore_tree(cand))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f'{cand}: {type(e).__name__}: {e}')
      continue
    if found is not None:
      meta = {'source': cand}
      meta_file = os.path.join(os.path.dirname(cand), 'meta', 'metadata')
      if os.path.isfile(meta_file):  # the trainers' JSON 'meta' item
        with open(meta_file) as f:
          meta.update(json.load(f))
      return _as_dict(found), meta
  raise ConvertError(
      f'{path} is neither a converted jaxres checkpoint (no {METADATA_FILE}) '
      "nor an Orbax checkpoint holding 'params'." +
      (' Errors: ' + '; '.join(errors) if errors else ''))


def _merge_checkpoint(source: Mapping[str, Any], target: Mapping[str, Any],
                      backbone_only: bool) -> Dict[str, Any]:
  """Copies source leaves into target, by flax path, with checks."""
  target = _as_dict(target)
  source = _as_dict(source)
  t_seg = 'backbone' in target['params']
  s_seg = 'backbone' in source['params']
  out_flat = {}
  problems, missing, unexpected = [], [], []
  for c in COLLECTIONS:
    t_flat = _flatten(target.get(c, {}))
    s_flat = dict(_flatten(source.get(c, {})))
    if backbone_only:
      if t_seg and not s_seg:  # classification checkpoint as the encoder
        s_flat = {('backbone',) + p: v for p, v in s_flat.items()
                  if p[0] not in _CLASSIFIER_MODULES}
      if not t_seg and s_seg:
        s_flat = {p[1:]: v for p, v in s_flat.items() if p[0] == 'backbone'}
    used = set()
    for p, t_leaf in t_flat.items():
      name = '/'.join((c,) + p)
      in_backbone = (p[0] == 'backbone') if t_seg else (
          p[0] not in _CLASSIFIER_MODULES)
      if backbone_only and not in_backbone:
        out_flat[(c,) + p] = t_leaf
        continue
      if p not in s_flat:
        missing.append(name)
        continue
      used.add(p)
      s_leaf = np.asarray(s_flat[p])
      if s_leaf.shape != tuple(np.shape(t_leaf)):
        e = Entry(c, p, name, tuple(np.shape(t_leaf)), in_backbone)
        problems.append(
            f'shape mismatch for {name}: checkpoint {s_leaf.shape}, model '
            f'{tuple(np.shape(t_leaf))}; '
            + _mismatch_cause(e, s_leaf.shape[::-1], tuple(np.shape(t_leaf))[::-1]))
        continue
      out_flat[(c,) + p] = s_leaf.astype(getattr(t_leaf, 'dtype', np.float32))
    for p in s_flat:
      if p in used:
        continue
      if backbone_only and (p[0] != 'backbone' if t_seg else
                            p[0] in _CLASSIFIER_MODULES):
        continue
      unexpected.append('/'.join((c,) + p))
  if missing or unexpected or problems:
    msg = ['Cannot load the checkpoint into this model.']
    if missing:
      msg.append(f'{len(missing)} missing: ' + ', '.join(missing))
    if unexpected:
      msg.append(f'{len(unexpected)} unexpected: ' + ', '.join(unexpected))
    msg.extend(problems)
    raise ConvertError('\n'.join(msg))
  return _unflatten(out_flat)


def load_pretrained(path: str, target_variables: Mapping[str, Any],
                    model_name: str, backbone_only: bool = False,
                    allow_missing: Sequence[str] = (),
                    allow_unexpected: Sequence[str] = (),
                    log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Initial variables for training from a torch file or a jaxres checkpoint.

  ``target_variables`` are the freshly initialised variables of the model
  (``model_name`` is only used in messages). With ``backbone_only`` only
  params/batch_stats under 'backbone' (for a classifier: all but its last
  layer) are replaced; the rest keeps its fresh initialisation. Returns a
  new {'params', 'batch_stats'} dict with the target's tree and dtypes.
  """
  if not os.path.exists(path):
    raise ConvertError(
        f'init_from={path!r} does not exist; refusing to train {model_name} '
        'from random weights by accident.')
  try:
    if os.path.isdir(path):
      source, meta = read_jaxres_checkpoint(path)
      if meta.get('model') and meta['model'] != model_name:
        log(f'init_from: {path} was converted for {meta["model"]}, loading '
            f'into {model_name}.')
      merged = _merge_checkpoint(source, target_variables, backbone_only)
      log(f'init_from: loaded {"backbone of " if backbone_only else ""}'
          f'jaxres checkpoint {path} into {model_name}.')
      return merged
    state, notes = read_state_dict(path)
    merged, report = convert_state_dict(
        state, target_variables, backbone_only=backbone_only,
        allow_missing=allow_missing, allow_unexpected=allow_unexpected)
  except ConvertError as e:
    raise ConvertError(f'init_from={path} for model {model_name}: {e}') from e
  report.notes[:0] = notes
  log(f'init_from: {path} -> {model_name}'
      f'{" (backbone only)" if backbone_only else ""}\n{report.summary()}')
  return merged


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _patterns(s: str) -> List[str]:
  return [p for p in (s or '').split(',') if p]


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m jaxres.convert',
      description='Convert a PyTorch state dict into a jaxres checkpoint.')
  parser.add_argument('--model', required=True,
                      help='jaxres model name, e.g. resnet50, mobilenet_v2, '
                      'unet_resnet50, unet_vgg16, deeplabv3plus_mobilenet_v2')
  parser.add_argument('--num_classes', type=int, required=True)
  parser.add_argument('--input', required=True,
                      help='.pth/.pt/.bin/.tar state dict or .safetensors')
  parser.add_argument('--output', required=True,
                      help='new directory for the jaxres checkpoint')
  parser.add_argument('--output_stride', type=int, default=None,
                      help='recorded for backbones/segmentation models; '
                      'does not change the weights')
  parser.add_argument('--model_kwargs', default='{}',
                      help='JSON dict of further model fields to record, e.g. '
                      '\'{"backbone_stem": "ceil_pool"}\' for bubbliiiing UNet')
  parser.add_argument('--backbone_only', action='store_true',
                      help='convert only the backbone; the rest stays '
                      'randomly initialised (seed 0)')
  parser.add_argument('--allow_missing', default='',
                      help='comma-separated torch key patterns (fnmatch) '
                      'that may be absent; those variables stay initialised')
  parser.add_argument('--allow_unexpected', default='',
                      help='comma-separated torch key patterns that may be '
                      'left unused')
  args = parser.parse_args(argv)

  try:
    if os.path.exists(args.output):
      raise ConvertError(f'Refusing to overwrite existing output {args.output}.')
    state, notes = read_state_dict(args.input)
    for note in notes:
      print(f'note: {note}')
    try:
      kwargs = dict(json.loads(args.model_kwargs))
    except (ValueError, TypeError) as e:
      raise ConvertError(f'--model_kwargs is not a JSON dict: {e}') from e
    if args.output_stride is not None:
      kwargs['output_stride'] = args.output_stride
    try:
      model, shapes = model_variables_shape(args.model, args.num_classes,
                                            **kwargs)
    except (ValueError, TypeError) as e:  # unknown model or model field
      raise ConvertError(str(e)) from e
    target = shapes
    if args.backbone_only or _patterns(args.allow_missing):
      import jax  # pylint: disable=g-import-not-at-top
      import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
      target = _as_dict(jax.jit(lambda: model.init(
          jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))())
      target = {c: _unflatten({p: np.asarray(v) for p, v in
                               _flatten(target[c]).items()}) for c in target}
    variables, report = convert_state_dict(
        state, target, backbone_only=args.backbone_only,
        allow_missing=_patterns(args.allow_missing),
        allow_unexpected=_patterns(args.allow_unexpected))
    num_params = int(sum(np.size(v) for v in _flatten(variables['params']).values()))
    save_converted(args.output, variables, {
        'model': args.model,
        'num_classes': args.num_classes,
        'model_kwargs': kwargs,
        'source': os.path.abspath(args.input),
        'source_layout': report.layout,
        'backbone_only': args.backbone_only,
        'num_params': num_params,
    })
  except ConvertError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(report.summary())
  print(f'wrote {args.output} ({num_params:,} parameters, model {args.model}, '
        f'num_classes {args.num_classes})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
