"""`signals.StopSignals` outside a run: what the in-process SIGINT test of
tests/test_reliability.py does not reach."""

import os
import signal
import threading
import time

import pytest

from maskcon_jax import signals


def test_second_sigint_interrupts_at_once():
  """The first SIGINT asks for a stop; a second one, from a user who does
  not want to wait, raises KeyboardInterrupt; the handlers come back."""
  before = signal.getsignal(signal.SIGINT)
  with signals.StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.time() + 10
    while stop.received is None and time.time() < deadline:
      time.sleep(0.01)  # Python runs the handler between bytecodes.
    assert stop.requested(0, 1) and stop.name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(10)
  assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_installs_nothing():
  """Python takes handlers only from the main thread: entered from another
  one, the handlers stay as they were (and nothing raises)."""
  before = {sig: signal.getsignal(sig) for sig in signals.StopSignals.SIGNALS}
  seen = {}

  def run():
    with signals.StopSignals() as stop:
      seen.update({sig: signal.getsignal(sig) for sig in stop.SIGNALS})
      seen["requested"] = stop.requested(0, 1)

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == {**before, "requested": False}
  assert {sig: signal.getsignal(sig) for sig in before} == before
