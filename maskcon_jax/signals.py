"""Stopping a training run cleanly on SIGTERM or Ctrl-C (`StopSignals`).

The training loop asks `StopSignals.requested` before every step; after a
signal it stops there, writes a checkpoint of the last finished step and
raises `errors.Interrupted`, so the same command resumes the run.
"""

from __future__ import annotations

import signal
import threading

import jax
import jax.experimental.multihost_utils
import numpy as np


class StopSignals:
  """Turns SIGTERM and SIGINT into a request to stop after the current step.

  Handlers are installed only while the training loop runs, and only from
  the main thread (the only one Python delivers signals to); the previous
  ones come back on exit. A second SIGINT raises ``KeyboardInterrupt`` at
  once, for a user who does not want to wait.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._agreed = False
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      # None: the handler was not installed from Python; the default is the
      # closest equivalent.
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self.received is not None:
      raise KeyboardInterrupt
    self.received = signum

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name

  @property
  def stopping(self) -> bool:
    """Whether every process knows the run is stopping: one process, any
    signal received; several, only once `requested` said so. Work that all
    processes do together (evaluation) is skipped on this, never on a
    signal only one process has seen, or the others would wait for it."""
    if jax.process_count() == 1:
      return self.received is not None
    return self._agreed

  def requested(self, step: int, every: int) -> bool:
    """Whether to stop now. With several processes, all must stop at the same
    step, so they agree (one all-gather) only every ``every`` steps."""
    if jax.process_count() == 1:
      return self.received is not None
    if step % every:
      return False
    flags = jax.experimental.multihost_utils.process_allgather(
        np.int32(self.received is not None)
    )
    if np.max(flags) and self.received is None:
      self.received = signal.SIGTERM
    self._agreed = bool(np.max(flags))
    return self._agreed
