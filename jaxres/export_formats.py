"""Writers and runtimes of the three export formats (used by jaxres.export).

Each format has a writer, `write_<format>(fn, spec, path, ...)`, that traces
the inference function `fn(images)` once with a symbolic batch dimension and
writes the result, and a loader, `load_<format>(path)`, that opens the file
with the format's own runtime and returns `run(images) -> numpy array`:

- stablehlo: `jax.export` (serialized StableHLO with its calling convention);
  runs back through `jax.export.deserialize(...).call`.
- savedmodel: `jax.experimental.jax2tf` (native serialization: the StableHLO
  module inside an XlaCallModule op); the weights are tf.Variables and the
  signature 'serving_default' takes `images` and returns `{output_name}`.
- onnx: jax2onnx, which converts the jaxpr's lax primitives one by one into
  ONNX operators; runs in onnxruntime.
"""
import contextlib
import io
import logging
from typing import Callable, NamedTuple, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxres.models import batchnorm
from jaxres.models import layers
from jaxres.models import pooling

INPUT_NAME = 'images'
BATCH = 'batch'  # The name of the symbolic batch dimension in every format.
ONNX_OPSET = 23


class InputSpec(NamedTuple):
  """One batch of images: [batch, height, width, 3] of `dtype`."""
  height: int
  width: int
  dtype: np.dtype

  def abstract(self, batch):
    return jax.ShapeDtypeStruct((batch, self.height, self.width, 3),
                                self.dtype)


@contextlib.contextmanager
def portable_convolutions():
  """Traces the models with XLA's / flax's own ops, not jaxres's CPU forms.

  On CPU jaxres computes a depthwise convolution as a sum of shifted taps, a
  1x1 convolution as a matrix product and the max pool through a custom
  gradient (faster to train there; see jaxres.models.switches). An exported
  graph may run anywhere, so it gets the standard grouped / 1x1 convolutions
  and a plain max pool, as on GPU and TPU (ONNX Runtime rejects the custom
  max pool's padded window). The kernel-gradient and BatchNorm forms touch
  only training; they are switched too, so the graph is what a GPU traces.
  The parity check compares against jaxres's own CPU forms.
  """
  portable = ((layers, 'DEPTHWISE_IMPL', 'grouped'),
              (layers, 'POINTWISE_IMPL', 'conv'),
              (pooling, 'MAXPOOL_IMPL', 'xla'),
              (layers, 'CONV_FILTER_GRAD_IMPL', 'xla'),
              (batchnorm, 'BATCHNORM_IMPL', 'flax'))
  saved = [getattr(module, name) for module, name, _ in portable]
  for module, name, value in portable:
    setattr(module, name, value)
  try:
    yield
  finally:
    for (module, name, _), value in zip(portable, saved):
      setattr(module, name, value)


# ---------------------------------------------------------------------------
# StableHLO (jax.export).
# ---------------------------------------------------------------------------

def write_stablehlo(fn: Callable, spec: InputSpec, path: str,
                    platforms: Sequence[str]) -> None:
  batch, = jax.export.symbolic_shape(BATCH)
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
      spec.abstract(batch))
  with open(path, 'wb') as f:
    f.write(exported.serialize())


def load_stablehlo(path: str) -> Callable:
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return lambda images: np.asarray(exported.call(images))


# ---------------------------------------------------------------------------
# TensorFlow SavedModel (jax2tf).
# ---------------------------------------------------------------------------

def write_savedmodel(fn_of_variables: Callable, variables, spec: InputSpec,
                     path: str, output_name: str,
                     platforms: Sequence[str]) -> None:
  """`fn_of_variables(variables, images)`; the variables become tf.Variables."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(variables)
  converted = jax2tf.convert(
      lambda ls, images: fn_of_variables(jax.tree.unflatten(treedef, ls),
                                         images),
      polymorphic_shapes=[None, f'({BATCH}, ...)'], with_gradient=False,
      native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.weights = [tf.Variable(np.asarray(leaf), trainable=False)
                    for leaf in leaves]
  signature = tf.TensorSpec((None, spec.height, spec.width, 3),
                            tf.as_dtype(spec.dtype), name=INPUT_NAME)

  @tf.function(autograph=False, input_signature=[signature])
  def serve(images):
    return {output_name: converted(module.weights, images)}

  module.serve = serve
  tf.saved_model.save(module, path, signatures={'serving_default': serve})


def load_savedmodel(path: str) -> Callable:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(path).signatures['serving_default']

  def run(images):
    outputs = serve(**{INPUT_NAME: tf.constant(images)})
    (value,) = outputs.values()
    return value.numpy()
  return run


# ---------------------------------------------------------------------------
# ONNX (jax2onnx).
# ---------------------------------------------------------------------------

def _pool_over_hw(x, init, op, window_shape, strides, padding):
  """reduce_window over H, W only, as a 3-D window on [B*C, H, W].

  jax2onnx turns an NHWC reduce_window into a 4-D ONNX pool, which
  onnxruntime does not run ("Unsupported pooling size"); on [B*C, H, W] it
  becomes a 3-D pool with a window of 1 on the first axis, which it runs.
  """
  b, h, w, c = x.shape
  strides = tuple(strides or (1,) * len(window_shape))
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((h, w), window_shape, strides, padding)
  y = jnp.transpose(x, (0, 3, 1, 2)).reshape(-1, h, w)
  y = lax.reduce_window(y, jnp.asarray(init, x.dtype), op,
                        (1, *window_shape), (1, *strides),
                        ((0, 0), *[tuple(p) for p in padding]))
  return jnp.transpose(y.reshape(b, c, *y.shape[1:]), (0, 2, 3, 1))


def _onnx_max_pool(inputs, window_shape, strides=None, padding='VALID'):
  return _pool_over_hw(inputs, -jnp.inf, lax.max, window_shape, strides,
                       padding)


def _onnx_avg_pool(inputs, window_shape, strides=None, padding='VALID',
                   count_include_pad=True):
  total = _pool_over_hw(inputs, 0, lax.add, window_shape, strides, padding)
  if count_include_pad:
    return total / np.prod(window_shape)
  ones = jnp.ones((1, *inputs.shape[1:3], 1), inputs.dtype)
  return total / _pool_over_hw(ones, 0, lax.add, window_shape, strides,
                               padding)


def _jax2onnx_patch_sites():
  """(object, attribute) pairs that jax2onnx replaces while it traces."""
  # Internal API of the pinned jax2onnx (0.12.5); written defensively.
  from jax2onnx.plugins import _patching  # pylint: disable=g-import-not-at-top
  from jax2onnx.plugins import plugin_system  # pylint: disable=g-import-not-at-top
  plugin_system.import_all_plugins()
  sites = set()
  for plugin in plugin_system.PLUGIN_REGISTRY.values():
    if isinstance(plugin, plugin_system.PrimitiveLeafPlugin):
      for patch in type(plugin).binding_specs():
        try:
          sites.add((_patching._resolve(patch.target), patch.attr))  # pylint: disable=protected-access
        except (ImportError, AttributeError):
          pass
  for _, targets, attr in plugin_system._iter_patch_specs():  # pylint: disable=protected-access
    sites.update((target, attr) for target in targets)
  return sites


def _with_plain_jax(fn: Callable) -> Callable:
  """`fn`, traced with JAX and flax as they are, not as jax2onnx patches them.

  jax2onnx swaps flax.linen layers and jax.numpy functions for shims that
  emit its own high-level primitives while it traces; the flax.linen ones do
  not take jaxres's calls (positional pool windows, explicit (lo, hi)
  padding). Inside `fn` the originals are put back, so the jaxpr holds plain
  lax primitives, which jax2onnx converts one by one. flax's max/avg pool
  are replaced by the same pools written for onnxruntime (_pool_over_hw).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  try:
    sites = _jax2onnx_patch_sites()
  except (ImportError, AttributeError) as e:  # Another jax2onnx version.
    logging.warning('Cannot undo jax2onnx tracing patches (%s); converting '
                    'with them.', e)
    sites = set()
  originals = {site: getattr(*site) for site in sites if hasattr(*site)}
  originals[(nn, 'max_pool')] = _onnx_max_pool
  originals[(nn, 'avg_pool')] = _onnx_avg_pool

  def traced(images):
    active = {site: getattr(*site) for site in originals}
    for (owner, attr), value in originals.items():
      setattr(owner, attr, value)
    try:
      return fn(images)
    finally:
      for (owner, attr), value in active.items():
        setattr(owner, attr, value)
  return traced


def write_onnx(fn: Callable, spec: InputSpec, path: str, output_name: str,
               opset: int = ONNX_OPSET) -> None:
  import jax2onnx  # pylint: disable=g-import-not-at-top
  import onnx  # pylint: disable=g-import-not-at-top
  # jax2onnx logs every plugin it cannot import (dm_pix, equinox) and
  # onnx_ir every shape it leaves symbolic; neither affects the result.
  loggers = [logging.getLogger(n) for n in ('jax2onnx', 'onnx_ir')]
  previous = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    # jax2onnx prints debugging lines on stdout.
    with contextlib.redirect_stdout(io.StringIO()):
      model = jax2onnx.to_onnx(
          # A named (string) dimension is symbolic in the ONNX graph.
          _with_plain_jax(fn), [spec.abstract(BATCH)], opset=opset,
          input_names=[INPUT_NAME], output_names=[output_name])
  finally:
    for logger, level in zip(loggers, previous):
      logger.setLevel(level)
  onnx.checker.check_model(model)
  onnx.save_model(model, path)


def load_onnx(path: str) -> Callable:
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(
      path, providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  return lambda images: session.run(None, {name: images})[0]
