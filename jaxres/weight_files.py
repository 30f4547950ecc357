"""jaxres's own weight files: converted directories and training checkpoints.

`save_converted` writes what `python -m jaxres.convert` produces (an Orbax
checkpoint of {'params', 'batch_stats'} plus jaxres_model.json);
`read_jaxres_checkpoint` reads that, a trainer's workdir or checkpoints
directory (latest step), one step, or one PyTree checkpoint holding 'params',
all through Orbax's API; `merge_variables` puts such a tree into another
model's variables (all of it, or the backbone only), naming every mismatch.
"""
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from jaxres.weights import (  # pylint: disable=g-importing-member
    COLLECTIONS, ConvertError, as_variables, classifier_modules, flatten,
    mismatch_cause, unflatten)
from jaxres import weights

METADATA_FILE = 'jaxres_model.json'
VARIABLES_DIR = 'variables'
FORMAT = 'jaxres-converted-v1'


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
             {c: variables[c] for c in weights.COLLECTIONS if c in variables})
  ckptr.wait_until_finished()
  with open(os.path.join(output_dir, METADATA_FILE), 'w') as f:
    json.dump(dict(metadata, format=FORMAT), f, indent=2, sort_keys=True)


def _variables_in(tree: Any, keys: Tuple[str, ...] = ()):
  """(keys, {'params'[, 'batch_stats']}) of the first such node, or None."""
  if not isinstance(tree, Mapping):
    return None
  if 'params' in tree:
    return keys, {c: tree[c] for c in weights.COLLECTIONS if tree.get(c)}
  for k, v in tree.items():
    found = _variables_in(v, keys + (k,))
    if found is not None:
      return found
  return None


def _restore_variables(tree_metadata, restore) -> Optional[Dict[str, Any]]:
  """Restores only the variables in a checkpoint, as numpy arrays.

  ``tree_metadata`` is the checkpoint's tree of array metadata (None if
  it has none) and ``restore(args)`` restores it with Orbax restore args.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  found = _variables_in(tree_metadata)
  if found is None:
    return None
  keys, tree = found
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
  for k in reversed(keys):
    abstract = {k: abstract}
  restored = restore(ocp.args.PyTreeRestore(
      abstract, partial_restore=True, restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)))
  for k in keys:
    restored = restored[k]
  return weights.as_variables(restored)


def _read_tree(path: str):
  """(variables, {}) of one PyTree checkpoint, or None if it is not one."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckptr = ocp.PyTreeCheckpointer()
  variables = _restore_variables(
      getattr(ckptr.metadata(path).item_metadata, 'tree', None),
      lambda args: ckptr.restore(path, args=args))
  return None if variables is None else (variables, {})


def _read_step(path: str):
  """(variables, JSON items merged) of one composite checkpoint, or None.

  A trainer's step holds its TrainState and JSON 'meta' as two items; the
  item names and handlers come from the step's own metadata.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  item_handlers = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).metadata(
      path).item_handlers
  kinds = {n: str(h).rsplit('.', 1)[-1]
           for n, h in (item_handlers or {}).items()}
  trees = sorted(n for n, k in kinds.items() if k in (
      'StandardCheckpointHandler', 'PyTreeCheckpointHandler'))
  jsons = sorted(n for n, k in kinds.items() if k == 'JsonCheckpointHandler')
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      **{n: ocp.PyTreeCheckpointHandler() for n in trees},
      **{n: ocp.JsonCheckpointHandler() for n in jsons}))
  item_metadata = ckptr.metadata(path).item_metadata
  for name in trees:
    variables = _restore_variables(
        getattr(item_metadata[name], 'tree', None),
        lambda args, name=name: ckptr.restore(
            path, ocp.args.Composite(**{name: args}))[name])
    if variables is not None:
      meta = {}
      if jsons:
        restored = ckptr.restore(path, ocp.args.Composite(
            **{n: ocp.args.JsonRestore() for n in jsons}))
        for n in jsons:
          meta.update(restored[n] or {})
      return variables, meta
  return None


def read_jaxres_checkpoint(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(variables, metadata) from a converted dir or a training checkpoint.

  Training checkpoints: a trainer's workdir or its Orbax CheckpointManager
  directory (the latest step is used), one step of it, or one PyTree
  checkpoint whose tree holds 'params' (and 'batch_stats').
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  meta = {}
  if os.path.isfile(os.path.join(path, METADATA_FILE)):  # by save_converted
    with open(os.path.join(path, METADATA_FILE)) as f:
      meta = json.load(f)
    path = os.path.join(path, VARIABLES_DIR)
  try:
    found = _read_tree(path)
    if found is None:
      for directory in (os.path.join(path, 'checkpoints'), path):
        latest = ocp.step.latest_step_metadata(
            directory, ocp.step.standard_name_format())
        if latest is not None:  # a checkpoint manager's directory
          path = str(latest.path)
          break
      found = _read_step(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ConvertError(
        f'Could not read {path} as a jaxres checkpoint: '
        f'{type(e).__name__}: {e}') from e
  if found is None:
    raise ConvertError(
        f'{path} is neither a converted jaxres checkpoint (no {METADATA_FILE}) '
        "nor an Orbax checkpoint holding 'params'.")
  # The model's weights: a training run's auxiliary head is not part of it.
  from jaxres import checkpoint  # pylint: disable=g-import-not-at-top
  variables = checkpoint.model_variables(found[0])
  return variables, {'source': path, **meta, **found[1]}


def merge_variables(source: Mapping[str, Any], target: Mapping[str, Any],
                    backbone_only: bool) -> Dict[str, Any]:
  """Copies ``source`` leaves into ``target`` by flax path, with checks.

  With ``backbone_only`` a classification source may feed a segmentation
  target's backbone and the other way round; the rest keeps the target's
  values.
  """
  target, source = as_variables(target), as_variables(source)
  classifiers = classifier_modules()
  t_seg = 'backbone' in target['params']
  s_seg = 'backbone' in source['params']

  def in_backbone(p):
    return p[0] == 'backbone' if t_seg else p[0] not in classifiers

  out_flat = {}
  problems, missing, unexpected = [], [], []
  for c in COLLECTIONS:
    t_flat = flatten(target.get(c, {}))
    s_flat = flatten(source.get(c, {}))
    if backbone_only and t_seg and not s_seg:  # a classifier as the encoder
      s_flat = {('backbone',) + p: v for p, v in s_flat.items()
                if p[0] not in classifiers}
    elif backbone_only and s_seg and not t_seg:
      s_flat = {p[1:]: v for p, v in s_flat.items() if p[0] == 'backbone'}
    for p, t_leaf in t_flat.items():
      name = '/'.join((c,) + p)
      want = tuple(np.shape(t_leaf))
      if backbone_only and not in_backbone(p):
        out_flat[(c,) + p] = t_leaf
      elif p not in s_flat:
        missing.append(name)
      elif np.shape(s_flat[p]) != want:
        got = tuple(np.shape(s_flat[p]))
        # Reversed shapes put output channels (classes) first, as in torch.
        problems.append(
            f'shape mismatch for {name}: checkpoint {got}, model {want}; '
            + mismatch_cause(p, got[::-1], want[::-1]))
      else:
        out_flat[(c,) + p] = np.asarray(s_flat[p]).astype(
            getattr(t_leaf, 'dtype', np.float32))
    unexpected += ['/'.join((c,) + p) for p in s_flat
                   if p not in t_flat and not (backbone_only and
                                               not in_backbone(p))]
  if missing or unexpected or problems:
    msg = ['Cannot load the checkpoint into this model.']
    if missing:
      msg.append(f'{len(missing)} missing: ' + ', '.join(missing))
    if unexpected:
      msg.append(f'{len(unexpected)} unexpected: ' + ', '.join(unexpected))
    raise ConvertError('\n'.join(msg + problems))
  return unflatten(out_flat)
