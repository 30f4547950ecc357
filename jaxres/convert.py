r"""Imports PyTorch weights into jaxres checkpoints, and reads them back.

    python -m jaxres.convert --model=resnet50 --num_classes=1000 \
        --input=resnet50-0676ba61.pth --output=/tmp/resnet50_tv

reads a state dict (``.pth``/``.pt``/``.bin``/``.tar`` through
``torch.load(weights_only=True)``, or ``.safetensors``), maps it onto the
variables of the named jaxres model and writes an Orbax checkpoint of
``{'params', 'batch_stats'}`` plus ``jaxres_model.json`` into ``--output``
(which must not exist yet). ``load_pretrained`` is what the trainers'
``init_from`` calls; it takes a torch file, a converted directory or a
trainer's checkpoints, all read through Orbax's API.

This file only reads and writes files. The mapping is ``jaxres.weights``;
how each model's weights are named in PyTorch is at the end of its model file
(torchvision ResNet, MobileNetV2, VGG16; bubbliiiing's UNet and DeepLabV3+
and their ImageNet MobileNetV2; with ``backbone_only``, any classification
file above as the encoder of a segmentation model).
"""
import argparse
import importlib.util
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from jaxres import weight_files
from jaxres import weights

# jaxres's own weight files (converted directories, training checkpoints).
METADATA_FILE = weight_files.METADATA_FILE
save_converted = weight_files.save_converted
read_jaxres_checkpoint = weight_files.read_jaxres_checkpoint

# The mapping's API, for callers of this module.
ConvertError = weights.ConvertError
ConversionReport = weights.ConversionReport
convert_state_dict = weights.convert_state_dict
StateDict = weights.StateDict

# Keys a training script wraps a state dict in ({'state_dict': sd, 'epoch': 3}).
_NESTING_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'network',
                 'weights', 'params')

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
# jaxres checkpoints, through Orbax's API
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
  return model, weights.as_variables(shapes)


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
  Training-only variables of the target (the auxiliary head) are not part of
  the model and keep their fresh initialisation.
  """
  from jaxres import checkpoint  # pylint: disable=g-import-not-at-top
  fresh = {c: {k: v for k, v in tree.items() if k in checkpoint.TRAINING_ONLY}
           for c, tree in target_variables.items()}
  merged = _load_model_variables(
      path, checkpoint.model_variables(target_variables), model_name,
      backbone_only, allow_missing, allow_unexpected, log)
  if any(fresh.values()):
    log(f'init_from: {", ".join(checkpoint.TRAINING_ONLY)} (training only) '
        'keeps its fresh initialisation.')
    merged = {c: {**merged.get(c, {}), **fresh.get(c, {})}
              for c in set(merged) | set(fresh)}
  return merged


def _load_model_variables(path, target_variables, model_name, backbone_only,
                          allow_missing, allow_unexpected, log):
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
      merged = weight_files.merge_variables(source, target_variables,
                                       backbone_only)
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
      target = jax.tree.map(np.asarray, weights.as_variables(jax.jit(
          lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                             train=False))()))
    variables, report = convert_state_dict(
        state, target, backbone_only=args.backbone_only,
        allow_missing=_patterns(args.allow_missing),
        allow_unexpected=_patterns(args.allow_unexpected))
    num_params = int(sum(
        np.size(v) for v in weights.flatten(variables['params']).values()))
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
