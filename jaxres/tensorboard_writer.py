"""TensorBoard event files written without TensorFlow.

The training loop's writer: scalars, images and hyperparameters, the same
summaries clu.metric_writers.SummaryWriter writes through tf.summary, but
built with tensorboard's own protos and written by its EventFileWriter (a
background thread, so a step never waits on the disk). clu's writers import
TensorFlow, which cost ~10 CPU seconds at every start on this project's
2-core machine; with this writer a run whose data needs no TensorFlow
(generated data, image folders, VOC / ADE20K folders) never imports it.
TensorBoard reads the files as it reads tf.summary's.

tensorboard's EventFileWriter opens its file with `tensorboard.compat.tf`,
which is TensorFlow itself whenever TensorFlow is installed (~9 CPU seconds
of import here): a local logdir is therefore opened with Python's own file
functions (`_LocalEventFileWriter`, the same file name and records); a remote
one (gs://...) still goes through EventFileWriter and TensorFlow's gfile.
"""
import io
import os
import socket
import time
from typing import Any, Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer import event_file_writer
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.summary.writer.record_writer import RecordWriter


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.dtype != np.uint8:  # Floats in [0, 1], as tf.summary.image.
    image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  if image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


class _LocalEventFileWriter(EventFileWriter):
  """EventFileWriter for a local directory, without `tensorboard.compat.tf`.

  Its __init__ with `open` and `os.makedirs` in place of tf.io.gfile; the file
  name, the first event, the records and the background writer are
  EventFileWriter's own (tensorboard==2.21.0, requirements.txt).
  """

  def __init__(self, logdir: str, max_queue_size: int = 10,  # pylint: disable=super-init-not-called
               flush_secs: int = 120):
    self._logdir = logdir
    os.makedirs(logdir, exist_ok=True)
    self._file_name = os.path.join(
        logdir, 'events.out.tfevents.%010d.%s.%s.%s' % (
            time.time(), socket.gethostname(), os.getpid(),
            event_file_writer._global_uid.get()))  # pylint: disable=protected-access
    self._general_file_writer = open(self._file_name, 'wb')  # pylint: disable=consider-using-with
    self._async_writer = event_file_writer._AsyncWriter(  # pylint: disable=protected-access
        RecordWriter(self._general_file_writer), max_queue_size, flush_secs)
    self.add_event(event_pb2.Event(
        wall_time=time.time(), file_version='brain.Event:2',
        source_metadata=event_pb2.SourceMetadata(
            writer='tensorboard.summary.writer.event_file_writer')))
    self.flush()


class SummaryWriter:
  """write_scalars / write_images / write_hparams / flush / close."""

  def __init__(self, logdir: str):
    logdir = str(logdir)
    local = '://' not in logdir
    self._writer = (_LocalEventFileWriter if local else EventFileWriter)(
        logdir, flush_secs=30)

  def _add(self, step: int, values) -> None:
    self._writer.add_event(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        summary=summary_pb2.Summary(value=list(values))))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    # simple_value: TensorBoard's scalar format that needs no TensorFlow
    # to write (its scalar_summary.pb imports it).
    self._add(step, (summary_pb2.Summary.Value(tag=name,
                                               simple_value=float(value))
                     for name, value in scalars.items()))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: name -> [N, H, W, C] (or [H, W, C]) uint8, or floats in [0, 1].

    One image per name and index (name/image/i), as tf.summary.image.
    """
    values = []
    for name, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      for i, image in enumerate(batch):
        h, w, c = image.shape
        tag = f'{name}/image/{i}' if len(batch) > 1 else f'{name}/image'
        values.append(summary_pb2.Summary.Value(
            tag=tag, image=summary_pb2.Summary.Image(
                height=h, width=w, colorspace=c,
                encoded_image_string=_png(image))))
    self._add(step, values)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._add(0, hparams_summary.hparams_pb(dict(hparams)).value)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class NullWriter:
  """The writer of processes other than 0: writes nothing."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_images(self, step, images):
    del step, images

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass
