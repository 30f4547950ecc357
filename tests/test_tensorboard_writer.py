"""jaxres's TensorBoard writer: what it writes, TensorBoard reads back."""
import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from jaxres import tensorboard_writer


def test_scalars_images_hparams_read_back(tmp_path):
  writer = tensorboard_writer.SummaryWriter(str(tmp_path))
  writer.write_hparams({'model': 'resnet18', 'learning_rate': 0.1})
  writer.write_scalars(5, {'loss': 2.5, 'eval_top1': np.float32(0.75)})
  writer.write_scalars(10, {'loss': 1.25})
  panel = np.zeros((4, 6, 3), np.uint8)
  panel[1, 2] = (255, 0, 7)
  writer.write_images(10, {'eval_image_0': panel[None]})
  writer.close()

  events = event_accumulator.EventAccumulator(
      str(tmp_path), size_guidance={event_accumulator.IMAGES: 0})
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars('loss')] == [(5, 2.5),
                                                                  (10, 1.25)]
  assert events.Scalars('eval_top1')[0].value == 0.75
  (image,) = events.Images('eval_image_0/image')
  assert (image.step, image.width, image.height) == (10, 6, 4)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
  np.testing.assert_array_equal(decoded, panel)
  # The hparams plugin's summary is there (TensorBoard's HPARAMS tab).
  assert events.PluginTagToContent('hparams')


def test_writing_a_local_logdir_does_not_import_tensorflow(tmp_path):
  """tensorboard's EventFileWriter opens files through TensorFlow when it is
  installed (~9 CPU-s of import in every run); the writer must not."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  code = ('import sys\n'
          'from jaxres import tensorboard_writer\n'
          f'w = tensorboard_writer.SummaryWriter({str(tmp_path / "tb")!r})\n'
          'w.write_hparams({"lr": 0.1}); w.write_scalars(1, {"loss": 1.0})\n'
          'w.close()\n'
          'assert "tensorflow" not in sys.modules, "TensorFlow was imported"\n')
  subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT,
                 env=helpers.env(), check=True, timeout=120)
  events = event_accumulator.EventAccumulator(str(tmp_path / 'tb'))
  events.Reload()
  assert events.Scalars('loss')[0].value == 1.0
