r"""Exports a trained model to ONNX, a TF SavedModel or serialized StableHLO.

  python -m jaxres.export --workdir=runs/r50 --format=onnx --output=r50.onnx
  python -m jaxres.export --workdir=weights/resnet50 --format=savedmodel \
      --output=r50_savedmodel --preprocess
  python -m jaxres.export --workdir=runs/seg --format=stablehlo \
      --output=seg.stablehlo --seg_output=mask --image_size=512,1024

`--workdir` is a training run (its latest checkpoint, or `--step`) or a
directory written by `python -m jaxres.convert`. The model, its class count
and model_kwargs come from the checkpoint's own metadata, so no config is
needed; `--model` / `--num_classes` make the command refuse a checkpoint of
another model.

The exported function is the inference model: BatchNorm with its running
statistics, no dropout, no auxiliary head, float32. Input: NHWC images
[batch, H, W, 3] with a symbolic batch and a fixed H, W (`--image_size`; the
default is the input recorded in the run's dataset.json, the eval image_size
for classification and crop_size for segmentation, else 224 for
classification and 512 for segmentation: the models compute their
align-corners upsampling matrices and pool paddings from concrete sizes).
Normalised float32 by default; with `--preprocess`, uint8 RGB in 0-255 and
the ImageNet normalisation (jaxres.data MEAN_RGB / STDDEV_RGB) inside.
Output: logits ([batch, classes] or [batch, H, W, classes]), or with
`--seg_output=mask` the int32 argmax mask [batch, H, W].

Every export is checked as soon as it is written: opened with its own
runtime, run on images of two batch sizes and compared with jaxres's own
outputs. The max abs difference is printed; above --tolerance (1e-4) the
command fails (exit 1) and the file is moved to `<output>.failed`. Refusals
(exit 2): no checkpoint, a checkpoint of another model, an existing output
without --overwrite, a format whose runtime is not installed.
"""
import argparse
import importlib.util
import os
import shutil
import sys
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxres import checkpoint as ckpt_lib
from jaxres import data as data_lib
from jaxres import export_formats as formats
from jaxres import export_loader as loader

FORMATS = ('onnx', 'savedmodel', 'stablehlo')
# (module, pip requirement) each format needs beyond jax; see
# requirements-export.txt.
RUNTIMES = {
    'onnx': (('jax2onnx', 'jax2onnx==0.12.5'), ('onnx', 'onnx==1.23.2'),
             ('onnxruntime', 'onnxruntime==1.31.1')),
    'savedmodel': (('tensorflow', 'tensorflow-cpu==2.21.0'),),
    'stablehlo': (),
}
TOLERANCE = 1e-4
BATCH_SIZES = (1, 3)
DEFAULT_SIZE = {'classification': 224, 'segmentation': 512}


class ParityError(RuntimeError):
  """The exported model does not reproduce jaxres's outputs."""


# ---------------------------------------------------------------------------
# The exported function and its parity check.
# ---------------------------------------------------------------------------

def inference_fn(model, *, preprocess: bool, mask: bool) -> Callable:
  """fn(variables, images): the inference model, in float32."""
  def fn(variables, images):
    x = images.astype(jnp.float32)
    if preprocess:
      x = (x - jnp.asarray(data_lib.MEAN_RGB, jnp.float32)) / jnp.asarray(
          data_lib.STDDEV_RGB, jnp.float32)
    logits = model.apply(variables, x, train=False).astype(jnp.float32)
    return jnp.argmax(logits, -1).astype(jnp.int32) if mask else logits
  return fn


def sample_images(spec: formats.InputSpec, batch: int, seed: int):
  rng = np.random.default_rng(seed)
  shape = (batch, spec.height, spec.width, 3)
  if spec.dtype == np.uint8:
    return rng.integers(0, 256, shape, dtype=np.uint8)
  return rng.normal(size=shape).astype(np.float32)


def check_parity(run: Callable, trained: loader.Trained,
                 spec: formats.InputSpec, *, preprocess: bool, mask: bool,
                 tolerance: float = TOLERANCE) -> list[str]:
  """Compares `run(images)` with jaxres's outputs; ParityError if they differ.

  Logits: max abs difference <= tolerance. Masks: equal, except at pixels
  whose two best jaxres logits are within `tolerance` (an argmax there may go
  either way). Returns one line per batch.
  """
  logits_fn = jax.jit(inference_fn(trained.model, preprocess=preprocess,
                                   mask=False))
  lines, worst = [], 0.0
  for seed, batch in enumerate(BATCH_SIZES):
    images = sample_images(spec, batch, seed)
    logits = np.asarray(logits_fn(trained.variables, images))
    got = np.asarray(run(images))
    want = np.argmax(logits, -1).astype(np.int32) if mask else logits
    if got.shape != want.shape:
      raise ParityError(f'batch {batch}: output shape {got.shape}, jaxres '
                        f'{want.shape}.')
    if mask:
      top2 = np.sort(logits, -1)[..., -2:]
      differ = got != want
      unexplained = int(np.sum(differ & (top2[..., 1] - top2[..., 0]
                                         > tolerance)))
      lines.append(f'batch {batch}: {int(differ.sum())} of {want.size} mask '
                   f'pixels differ, {unexplained} outside near-ties')
      worst = max(worst, float(unexplained))
    else:
      diff = float(np.max(np.abs(got.astype(np.float64) - want)))
      lines.append(f'batch {batch}: max abs difference {diff:.3g} '
                   f'(outputs up to {np.max(np.abs(want)):.3g})')
      worst = max(worst, diff)
  if worst > (0 if mask else tolerance):
    raise ParityError('the exported model does not reproduce jaxres '
                      f'(tolerance {tolerance:g}):\n  ' + '\n  '.join(lines))
  return lines


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------

def missing_runtime(fmt: str) -> list[str]:
  return [req for module, req in RUNTIMES[fmt]
          if importlib.util.find_spec(module) is None]


def _check_output(path: str, fmt: str, overwrite: bool):
  if not os.path.lexists(path):
    return
  if not overwrite:
    raise loader.ExportError(
        f'--output={path} exists; pass --overwrite to replace it.')
  if fmt == 'savedmodel':
    if not os.path.isdir(path) or (
        os.listdir(path) and
        not os.path.exists(os.path.join(path, 'saved_model.pb'))):
      raise loader.ExportError(
          f'--output={path} is not a SavedModel directory; refusing to '
          'delete it. Choose another --output.')
    shutil.rmtree(path)
  elif os.path.isdir(path):
    raise loader.ExportError(
        f'--output={path} is a directory; --format={fmt} writes one file. '
        'Choose another --output.')
  else:
    os.remove(path)


def _image_hw(arg: Optional[str], trained: loader.Trained) -> tuple:
  if arg:
    try:
      hw = tuple(int(v) for v in arg.split(','))
    except ValueError:
      hw = ()
    if len(hw) == 1:
      hw = hw * 2
    if len(hw) != 2 or min(hw) <= 0:
      raise loader.ExportError(
          f'--image_size={arg}: give H or H,W (positive).')
    return hw
  return trained.image_hw or (DEFAULT_SIZE[trained.task],) * 2


def export(args) -> list[str]:
  """Writes and checks one export; returns the lines to print."""
  fmt = args.format
  missing = missing_runtime(fmt)
  if missing:
    raise loader.ExportError(
        f'--format={fmt} needs {", ".join(missing)}: pip install '
        f'{" ".join(missing)} (or pip install -r requirements-export.txt).')
  _check_output(args.output, fmt, args.overwrite)
  trained = loader.load_trained(
      args.workdir, step=args.step, ema=args.ema,
      expect={'model': args.model, 'num_classes': args.num_classes})
  mask = args.seg_output == 'mask'
  if mask and trained.task != 'segmentation':
    raise loader.ExportError(
        '--seg_output=mask applies to segmentation models; '
        f'{trained.meta["model"]} is a classifier.')
  h, w = _image_hw(args.image_size, trained)
  spec = formats.InputSpec(h, w, np.dtype(np.uint8 if args.preprocess
                                          else np.float32))
  fn = inference_fn(trained.model, preprocess=args.preprocess, mask=mask)
  output_name = 'mask' if mask else 'logits'
  platforms = [p for p in args.platforms.split(',') if p]
  variables = trained.variables
  with formats.portable_convolutions():
    if fmt == 'onnx':
      formats.write_onnx(lambda x: fn(variables, x), spec, args.output,
                         output_name, opset=args.opset)
    elif fmt == 'savedmodel':
      formats.write_savedmodel(fn, variables, spec, args.output, output_name,
                               platforms)
    else:
      formats.write_stablehlo(lambda x: fn(variables, x), spec, args.output,
                              platforms)
  run = getattr(formats, f'load_{fmt}')(args.output)
  try:
    checks = check_parity(run, trained, spec, preprocess=args.preprocess,
                          mask=mask, tolerance=args.tolerance)
  except ParityError:
    failed = args.output + '.failed'
    if os.path.isdir(failed):
      shutil.rmtree(failed)
    os.replace(args.output, failed)
    raise
  out_shape = ('[batch, H, W] int32 class mask' if mask else
               '[batch, H, W, classes] float32 logits'
               if trained.task == 'segmentation' else
               '[batch, classes] float32 logits')
  extra = (f', ONNX opset {args.opset}' if fmt == 'onnx' else
           f', platforms {",".join(platforms)}')
  return [f'Exported {trained.meta["model"]} ({trained.task}, '
          f'{trained.meta["num_classes"]} classes) from {trained.source}',
          f'  to {args.output} ({fmt}{extra})',
          f'  input  "{formats.INPUT_NAME}": [batch, {h}, {w}, 3] '
          + ('uint8 RGB 0-255 (normalised inside)' if args.preprocess else
             'float32, ImageNet-normalised'),
          f'  output "{output_name}": {out_shape}',
          f'Parity with jaxres ({fmt} runtime):'] + [f'  {c}' for c in checks]


def parse_args(argv: Optional[Sequence[str]]):
  p = argparse.ArgumentParser(
      prog='python -m jaxres.export',
      description='Export a trained jaxres model, checked against jaxres.')
  p.add_argument('--workdir', required=True,
                 help='training run, or a directory from jaxres.convert')
  p.add_argument('--format', required=True, choices=FORMATS)
  p.add_argument('--output', required=True,
                 help='file (onnx, stablehlo) or directory (savedmodel)')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the latest)')
  p.add_argument('--ema', action='store_true',
                 help='export the EMA weights (refused if there are none)')
  p.add_argument('--overwrite', action='store_true')
  p.add_argument('--image_size', default=None, help='H or H,W')
  p.add_argument('--preprocess', action='store_true',
                 help='uint8 RGB input, ImageNet normalisation inside')
  p.add_argument('--seg_output', choices=('logits', 'mask'), default='logits')
  p.add_argument('--model', default=None,
                 help='refuse a checkpoint of any other model')
  p.add_argument('--num_classes', type=int, default=None,
                 help='refuse a checkpoint with another class count')
  p.add_argument('--opset', type=int, default=formats.ONNX_OPSET)
  p.add_argument('--platforms', default='cpu,cuda,tpu',
                 help='stablehlo/savedmodel: platforms to lower for')
  p.add_argument('--tolerance', type=float, default=TOLERANCE)
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  try:
    lines = export(args)
  except (loader.ExportError, ckpt_lib.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except ParityError as e:
    print(f'error: {e}\nThe export was moved to {args.output}.failed; do not '
          'ship it.', file=sys.stderr)
    return 1
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
