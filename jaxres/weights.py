"""Puts saved weights into a model's variables, checking every one of them.

Two sources: a PyTorch state dict (``convert_state_dict``) and another jaxres
variable tree (``jaxres.weight_files.merge_variables``). Both return the target's tree with its
dtypes, and raise ``ConvertError`` naming every missing, unused or misshapen
weight, with the likely cause.

How PyTorch names a model's weights is said at the end of that model's file:
``TORCH_LAYOUTS`` (where each known source puts the backbone, with a
``torch_name(name, kind)`` that fixes what the generic rule below cannot say),
``TORCH_SIGNATURE`` (a flax module only that backbone has), ``CLASSIFIER`` (the
module giving the class logits) and, where needed, ``torch_weight(name, w)``.
The mapping walks the flax variables of the target, so every flax variable is
accounted for and every left-over torch key is reported.

Generic rule: a flax module path becomes a torch module name by turning '/'
and '_<number>' into '.<number>' (layer1_0/conv1 -> layer1.0.conv1,
features_0_0 -> features.0.0, aspp/conv_cat_0 -> aspp.conv_cat.0). Tensors:
conv OIHW -> HWIO (depthwise (C, 1, kh, kw) -> (kh, kw, 1, C)), linear
``weight.T``, BatchNorm ``weight``/``bias`` -> params ``scale``/``bias`` and
``running_mean``/``running_var`` -> batch_stats ``mean``/``var``;
``num_batches_tracked`` is dropped.
"""
import dataclasses
import fnmatch
import functools
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from jaxres import models

COLLECTIONS = ('params', 'batch_stats')

Path = Tuple[str, ...]
StateDict = Dict[str, np.ndarray]


class ConvertError(ValueError):
  """Weights cannot be imported; the message says why and what to do."""


# --------------------------------------------------------------------------
# What the model files say
# --------------------------------------------------------------------------


def torch_module_name(path: Path) -> str:
  """The generic rule: ('layer1_0', 'conv1') -> 'layer1.0.conv1'."""
  return '.'.join(re.sub(r'_(\d+)(?=_|$)', r'.\1', p) for p in path)


def _same_name(name: str, kind: str) -> str:
  del kind
  return name


@dataclasses.dataclass(frozen=True)
class Layout:
  """One way PyTorch files name a backbone's weights (a model file's entry)."""
  description: str
  backbone: Any  # the model module whose variables it names
  prefix: str  # torch key prefix of the backbone
  torch_name: Callable[[str, str], str] = _same_name
  # Keys of the source's own classifier: allowed left-overs with backbone_only.
  classifier_keys: Tuple[str, ...] = ()
  note: str = ''  # said when a whole model is loaded from this layout


def layouts(backbone) -> List[Layout]:
  """Every known layout of ``backbone`` (a model module), in registry order."""
  return [Layout(**{'backbone': module, **spec})
          for module in models.MODEL_MODULES
          for spec in getattr(module, 'TORCH_LAYOUTS', ())
          if spec.get('backbone', module) is backbone]


def _has_module(tree: Mapping[str, Any], path: str) -> bool:
  for name in path.split('/'):
    if not isinstance(tree, Mapping) or name not in tree:
      return False
    tree = tree[name]
  return True


def backbone_module(params: Mapping[str, Any]):
  """The model module whose backbone ``params`` are, by its TORCH_SIGNATURE."""
  for module in models.MODEL_MODULES:
    if _has_module(params, getattr(module, 'TORCH_SIGNATURE', '')):
      return module
  raise ConvertError(
      'Cannot tell which backbone these flax variables belong to (top-level '
      f'modules: {sorted(params)[:12]}); the model files give the PyTorch '
      'layouts of ResNet, MobileNetV2 and VGG.')


def classifier_modules() -> Tuple[str, ...]:
  """Top-level modules giving class logits: fresh with backbone_only."""
  return tuple(m.CLASSIFIER for m in models.MODEL_MODULES
               if hasattr(m, 'CLASSIFIER'))


# --------------------------------------------------------------------------
# Variable trees
# --------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> Dict[Path, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def unflatten(flat: Mapping[Path, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return tree


def as_variables(variables) -> Dict[str, Any]:
  """{'params', 'batch_stats'} as plain dicts (FrozenDicts unfrozen)."""
  from flax.core import unfreeze  # pylint: disable=g-import-not-at-top
  variables = unfreeze(variables)
  return {c: variables[c] for c in COLLECTIONS if c in variables}


def mismatch_cause(path: Path, got: Tuple[int, ...],
                   want: Tuple[int, ...]) -> str:
  """Why the weight at flax ``path`` is ``got``, not ``want`` (torch order)."""
  module = path[-2] if len(path) > 1 else ''
  if module in classifier_modules() and got and want and got[0] != want[0]:
    return (f'likely num_classes: the checkpoint has {got[0]} classes and the '
            f'model {want[0]}. Build the model with num_classes={got[0]}, or '
            'load only the backbone (backbone_only / --backbone_only) to '
            'train a fresh head.')
  if path[-1] == 'kernel' and len(got) == 4 and got[2:] != want[2:]:
    return 'kernel sizes differ: a different architecture or --model.'
  return ('channel counts differ: a different model variant (depth, width, '
          'width_mult, groups) or the wrong --model.')


# --------------------------------------------------------------------------
# PyTorch state dicts
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
  """One flax variable and the torch key it comes from."""
  collection: str
  path: Path  # flax path inside the collection, leaf name last
  torch_key: str
  shape: Tuple[int, ...]
  in_backbone: bool
  # The model file's fix of a torch kernel before the generic transpose.
  torch_weight: Optional[Callable[[np.ndarray], np.ndarray]] = None

  @property
  def flax_name(self) -> str:
    return '/'.join((self.collection,) + self.path)

  def to_flax(self, w: np.ndarray) -> np.ndarray:
    if self.path[-1] != 'kernel':
      return w
    if self.torch_weight is not None:
      w = self.torch_weight(w)
    if w.ndim == 4:  # conv OIHW -> HWIO; depthwise (C,1,kh,kw) -> (kh,kw,1,C)
      return w.transpose(2, 3, 1, 0)
    return w.T if w.ndim == 2 else w

  def torch_shape(self) -> Tuple[int, ...]:
    s = self.shape
    if self.path[-1] == 'kernel' and len(s) == 4:
      return (s[3], s[2], s[0], s[1])
    return s[::-1] if self.path[-1] == 'kernel' and len(s) == 2 else s


def _entries(flat: Mapping[Tuple[str, Path], Any], layout: Layout,
             is_segmentation: bool) -> List[Entry]:
  """The torch key every flax variable of the target comes from."""
  kinds = {path[:-1]: 'conv' for (c, path) in flat
           if c == 'params' and path[-1] == 'kernel'}
  classifier = getattr(layout.backbone, 'CLASSIFIER', None)
  fix = getattr(layout.backbone, 'torch_weight', None)
  entries = []
  for (collection, path), leaf in flat.items():
    module = path[:-1]
    torch_leaf = _TORCH_LEAF.get((collection, path[-1]))
    if torch_leaf is None:
      raise ConvertError(
          f'No PyTorch counterpart known for flax variable '
          f'{collection}/{"/".join(path)}.')
    if is_segmentation:
      in_backbone = module[0] == 'backbone'
      module_in_layout = module[1:] if in_backbone else None
    else:
      in_backbone = module[0] != classifier
      module_in_layout = module
    weight_fix = None
    if module_in_layout is None:  # a segmentation head: the generic rule
      name = torch_module_name(module)
    else:
      name = layout.torch_name(torch_module_name(module_in_layout),
                               kinds.get(module, 'norm'))
      if fix is not None:
        weight_fix = functools.partial(fix, name)
      name = layout.prefix + name
    entries.append(Entry(collection, path, f'{name}.{torch_leaf}',
                         tuple(np.shape(leaf)), in_backbone, weight_fix))
  return entries


def _matches(key: str, patterns: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _choose_layout(flat, state: StateDict, is_segmentation: bool,
                   backbone, backbone_only: bool) -> Tuple[Layout, List[Entry]]:
  """The layout under which most backbone keys are found in ``state``."""
  best = None
  for layout in layouts(backbone):
    if not is_segmentation and layout.prefix and not backbone_only:
      continue  # a whole classifier comes from a classification file
    entries = _entries(flat, layout, is_segmentation)
    score = sum(e.torch_key in state for e in entries if e.in_backbone)
    if best is None or score > best[0]:
      best = (score, layout, entries)
  if best is None:
    raise ConvertError(f'No PyTorch layout is known for {backbone.__name__}.')
  return best[1], best[2]


@dataclasses.dataclass
class ConversionReport:
  layout: str
  loaded: List[str]  # flax names filled from the file
  kept: List[str]  # flax names left as initialised
  ignored: List[str]  # torch keys deliberately not used
  notes: List[str]

  def summary(self) -> str:
    def some(names):
      return ', '.join(names[:8]) + (' ...' if len(names) > 8 else '')
    lines = [f'source layout: {self.layout}',
             f'loaded {len(self.loaded)} variables from the file']
    if self.kept:
      lines.append(f'kept {len(self.kept)} freshly initialised: '
                   f'{some(self.kept)}')
    if self.ignored:
      lines.append(f'not used from the file ({len(self.ignored)}): '
                   f'{some(self.ignored)}')
    return '\n'.join(lines + self.notes)


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
  target = as_variables(target_variables)
  if 'params' not in target:
    raise ConvertError("Target variables have no 'params' collection.")
  is_segmentation = 'backbone' in target['params']
  backbone = backbone_module(target['params']['backbone'] if is_segmentation
                             else target['params'])
  target_flat = {(c, p): v for c in COLLECTIONS
                 for p, v in flatten(target.get(c, {})).items()}
  layout, entries = _choose_layout(target_flat, state, is_segmentation,
                                   backbone, backbone_only)

  wanted = [e for e in entries if e.in_backbone or not backbone_only]
  consumed = {e.torch_key for e in wanted}
  # The target's own head keys, when only its backbone is loaded.
  head_keys = {e.torch_key for e in entries} - consumed
  problems, missing, kept, flat_out = [], [], [], {}
  missing_in_backbone = 0
  for e in entries:
    target_leaf = target_flat[(e.collection, e.path)]
    if (backbone_only and not e.in_backbone) or (
        e.torch_key not in state and _matches(e.torch_key, allow_missing)):
      kept.append(e.flax_name)
      flat_out[(e.collection, e.path)] = target_leaf
      continue
    if e.torch_key not in state:
      missing.append(f'{e.torch_key} (for {e.flax_name}, shape '
                     f'{e.torch_shape()})')
      missing_in_backbone += e.in_backbone
      continue
    w = np.asarray(state[e.torch_key])
    value = e.to_flax(w)
    if tuple(value.shape) != e.shape:
      want = e.torch_shape()
      problems.append(
          f'shape mismatch for {e.torch_key}: checkpoint {tuple(w.shape)}, '
          f'model {want} (flax {e.flax_name} {e.shape}); '
          + mismatch_cause(e.path, tuple(w.shape), want))
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
      msg.append(f'{len(unexpected)} unexpected key(s): '
                 + ', '.join(unexpected))
    raise ConvertError('\n'.join(msg + problems))

  variables = unflatten({(c,) + p: v for (c, p), v in flat_out.items()})
  report = ConversionReport(
      layout=layout.description,
      loaded=sorted(set(e.flax_name for e in wanted) - set(kept)),
      kept=kept, ignored=ignored,
      notes=[layout.note] if layout.note and not backbone_only else [])
  return variables, report
