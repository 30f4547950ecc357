"""The switches between jaxres's CPU forms of a layer and XLA's / flax's own.

Each form has a module variable <NAME>_IMPL, set at import from the environment
variable JAXRES_<NAME>_IMPL and read when a step is traced: in layers
(POINTWISE, CONV_FILTER_GRAD, DEPTHWISE), batchnorm (BATCHNORM) and pooling
(MAXPOOL). export_formats.portable_convolutions sets them all to XLA's forms.
"""
from typing import Tuple

import jax


def resolve(what: str, impl: str, choices: Tuple[str, str, str]) -> str:
  """choices = ('auto', CPU form, XLA's form): 'auto' picks by backend.

  Called at trace time, so the choice follows the default backend of the
  process; a jitted function keeps the choice it was traced with.
  """
  if impl not in choices:
    raise ValueError(f'Unknown {what} implementation {impl!r}; known: '
                     f'{", ".join(choices)}.')
  if impl == 'auto':
    return choices[1] if jax.default_backend() == 'cpu' else choices[2]
  return impl
