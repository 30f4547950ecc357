"""File input and output of `jaxres.predict` (local or gs:// paths)."""
import io

from etils import epath
import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


class PredictError(RuntimeError):
  """Bad input, output or checkpoint arguments."""


def find_images(path: str) -> list[epath.Path]:
  root = epath.Path(path)
  if root.is_file():
    return [root]
  if not root.is_dir():
    raise PredictError(f'--input={path} is neither an image file nor a folder.')
  found, folders = [], [root]
  while folders:  # A walk: gs:// paths have no recursive glob.
    for p in folders.pop().iterdir():
      if p.is_dir():
        folders.append(p)
      elif p.suffix.lower() in IMAGE_EXTENSIONS:
        found.append(p)
  found.sort()
  if not found:
    raise PredictError(
        f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {path}.')
  return found


def check_output_dir(output: str, overwrite: bool):
  out = epath.Path(output)
  if out.exists() and not out.is_dir():
    raise PredictError(f'--output={output} is a file, not a folder.')
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise PredictError(f'--output={output} exists and is not empty; pass '
                       '--overwrite to write into it anyway.')


def read_bytes(path: epath.Path) -> bytes:
  try:
    return path.read_bytes()
  except OSError as e:
    raise PredictError(f'Cannot read {path}: {e}') from e


def read_rgb(path: epath.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(read_bytes(path))) as img:
      return np.asarray(img.convert('RGB'))
  except OSError as e:
    raise PredictError(f'Cannot read image {path}: {e}') from e


def save_png(path: epath.Path, save_fn, *args):
  """save_fn(file, *args) through memory, so gs:// outputs work too."""
  buffer = io.BytesIO()
  buffer.name = path.name  # PIL takes the format from the name.
  save_fn(buffer, *args)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())


def relative_stem(path: epath.Path, inputs: str) -> str:
  root = epath.Path(inputs)
  relative = path.name if root.is_file() else str(path.relative_to(root))
  return relative[:-len(path.suffix)] if path.suffix else relative
