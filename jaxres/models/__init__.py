"""Model registry: configs name a model by string.

Each model module exposes a ``MODELS`` dict mapping names to module constructors
(usually ``functools.partial`` of one ``nn.Module``); they are merged here. Its
end says how PyTorch files name its weights (read by ``jaxres.weights``).
"""
import importlib

_MODULES = ('resnet', 'mobilenetv2', 'vgg', 'unet', 'deeplab')


def _import_modules():
  modules = []
  for name in _MODULES:
    try:
      modules.append(importlib.import_module(f'{__name__}.{name}'))
    except ModuleNotFoundError as e:
      if e.name != f'{__name__}.{name}':
        raise
  return tuple(modules)


def _collect(modules):
  registry = {}
  for module in modules:
    for key, ctor in module.MODELS.items():
      if key in registry:
        raise RuntimeError(f'Model name {key!r} registered twice.')
      registry[key] = ctor
  return registry


# The model files, in this order (the order PyTorch layouts are tried in).
MODEL_MODULES = _import_modules()
MODELS = _collect(MODEL_MODULES)


def build_model(name: str, **kwargs):
  """Returns the flax module registered as ``name``, built with ``kwargs``."""
  if name not in MODELS:
    raise ValueError(
        f'Unknown model {name!r}. Known models: {", ".join(sorted(MODELS))}. '
        'Set config.model to one of these.')
  return MODELS[name](**kwargs)
