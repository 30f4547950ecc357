"""What the loop watches while it runs: progress and ETA, NaN/inf, signals."""
from __future__ import annotations

import logging
import os
import signal
import time

import jax
import numpy as np


class NonFiniteError(FloatingPointError):
  """The loss or the gradient became NaN or inf."""


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped training after a checkpoint was written."""

  def __init__(self, signum: int, step: int):
    super().__init__(signal.Signals(signum).name, step)
    self.signum, self.step = signum, step

  @property
  def exit_code(self) -> int:
    # SIGTERM is the scheduler's preemption notice: a clean stop (0).
    # Ctrl-C keeps the shell convention 128 + SIGINT = 130.
    return 0 if self.signum == signal.SIGTERM else 128 + self.signum


class StopSignals:
  """Remembers SIGINT / SIGTERM until the current step finishes.

  The loop then saves and stops. A second Ctrl-C aborts at once (the async
  save in flight, if any, is abandoned; Orbax never commits a partial step).
  Multi-process runs agree on a common step through Orbax's preemption sync
  point instead, so the handlers are installed for one process only.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}

  @property
  def received(self) -> bool:
    return self.signum is not None

  def __enter__(self):
    if jax.process_count() == 1:
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      logging.error('Second Ctrl-C: aborting without saving.')
      os._exit(130)  # pylint: disable=protected-access
    logging.warning('%s received: finishing the step, then saving.',
                    signal.Signals(signum).name)
    self.signum = signum

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
  """Per-step metrics kept on device, checked and summarised at log steps.

  Fetching them only at log/checkpoint steps keeps the host from waiting on
  every step; a NaN/inf is still caught before the next checkpoint is written.
  """

  def __init__(self, writer, *, start_step: int, total_steps: int,
               batch_size: int, accuracy_key: str):
    self.writer, self.total_steps, self.batch_size = writer, total_steps, batch_size
    self.accuracy_key = accuracy_key
    self._history, self._history_start = [], start_step
    self._t_last, self._step_last = time.time(), start_step

  def add(self, metrics):
    self._history.append(metrics)

  def check_finite(self, last_saved):
    """Raises NonFiniteError naming the first step with a NaN/inf loss or grad."""
    host = jax.device_get(self._history)
    for offset, m in enumerate(host):
      if not (np.isfinite(m['loss']) and np.isfinite(m['grad_norm'])):
        saved = (f'the latest checkpoint (step {last_saved}) is untouched'
                 if last_saved else 'no checkpoint had been written')
        raise NonFiniteError(
            f'Non-finite loss ({m["loss"]}) or gradient norm '
            f'({m["grad_norm"]}) at step {self._history_start + offset + 1}. '
            f'Stopping; {saved}. Lower the learning rate, add '
            'config.grad_clip_norm, or check the input data.')
    return host

  def report(self, step: int, last_saved) -> dict:
    """Checks the steps since the last report, writes and logs their means."""
    host = self.check_finite(last_saved)
    self._history, self._history_start = [], step
    now = time.time()
    steps_per_sec = (step - self._step_last) / max(now - self._t_last, 1e-9)
    self._t_last, self._step_last = now, step
    summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    summary.update(steps_per_sec=steps_per_sec,
                   images_per_sec=steps_per_sec * self.batch_size)
    self.writer.write_scalars(step, summary)
    logging.info(
        'step %d/%d (%.1f%%) | loss %.4f | %s %.3f | lr %.4g | %.2f steps/s | '
        '%.1f img/s | ETA %s', step, self.total_steps,
        100 * step / self.total_steps, summary['loss'], self.accuracy_key,
        summary[self.accuracy_key], summary['learning_rate'], steps_per_sec,
        summary['images_per_sec'],
        _format_eta((self.total_steps - step) / max(steps_per_sec, 1e-9)))
    return summary
