"""Errors of the input pipelines; each message says what to change.

jaxres.runner reports DatasetNotFoundError and LabelError (with its
subclasses) without a traceback.
"""
from typing import Sequence


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not on disk, and jaxres never downloads one itself."""


class LabelError(ValueError):
  """The data and the config disagree; the message says the fix.

  Raised for masks (values, sizes, 0/255 binaries), missing files or splits,
  batch sizes that do not fit the data and inconsistent data fields of the
  config.
  """


class BadImageError(LabelError):
  """A file could not be decoded (counted or fatal, per config.on_bad_image)."""


class FolderLayoutError(LabelError):
  """The folders do not form a dataset; the message says what to change."""


def list_names(names: Sequence[str], limit: int = 10) -> str:
  """'a, b, c, ... (n more)': the first `limit` names, for messages."""
  shown = ', '.join(names[:limit])
  return shown + (f', ... ({len(names) - limit} more)'
                  if len(names) > limit else '')
