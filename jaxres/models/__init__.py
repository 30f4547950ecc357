"""Model registry: configs name a model by string.

Each model module exposes a ``MODELS`` dict mapping names to module constructors
(usually ``functools.partial`` of one ``nn.Module``); they are merged here.
"""
import importlib

_MODULES = ('resnet', 'mobilenetv2', 'vgg', 'unet', 'deeplab')


def _collect():
  registry = {}
  for name in _MODULES:
    try:
      module = importlib.import_module(f'{__name__}.{name}')
    except ModuleNotFoundError as e:
      if e.name != f'{__name__}.{name}':
        raise
      continue
    for key, ctor in module.MODELS.items():
      if key in registry:
        raise RuntimeError(f'Model name {key!r} registered twice.')
      registry[key] = ctor
  return registry


MODELS = _collect()


def build_model(name: str, **kwargs):
  """Returns the flax module registered as ``name``, built with ``kwargs``."""
  if name not in MODELS:
    raise ValueError(
        f'Unknown model {name!r}. Known models: {", ".join(sorted(MODELS))}. '
        'Set config.model to one of these.')
  return MODELS[name](**kwargs)
