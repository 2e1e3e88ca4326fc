"""The run lock (maskcon_jax.runlock, and trainer.take_run_lock across
processes). Whole runs refused on a held lock: tests/test_reliability.py and
tests/test_multiprocess.py."""

import os
import re

import jax
import jax.experimental.multihost_utils
import numpy as np
import pytest

from maskcon_jax import runlock
from maskcon_jax import trainer
from maskcon_jax.errors import WorkdirError


def test_lock_is_exclusive_and_leaves_no_trace(tmp_path):
  """Within one process too: a second holder is refused; releasing removes
  the file and the folders taking it created."""
  workdir = tmp_path / "new" / "run"
  lock = runlock.RunLock(str(workdir))
  lock.acquire()
  with pytest.raises(WorkdirError, match=rf"pid {os.getpid()} on host"):
    runlock.RunLock(str(workdir)).acquire()
  assert runlock.read_holder(str(workdir)).run_id == lock.run_id
  lock.release()
  lock.release()
  assert not (tmp_path / "new").exists()


def test_other_processes_check_process_0s_run_id(tmp_path, monkeypatch):
  """Process 1 of a job that shares the workdir accepts the lock its
  process 0 took (same run id) and refuses one of another launch; when
  process 0 was refused, so is every other process. (The whole exchange,
  with real processes: tests/test_multiprocess.py.)"""
  workdir = tmp_path / "run"
  held = runlock.RunLock(str(workdir))
  held.acquire()
  sent = {}
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)

  def broadcast(message):  # What process 0 of the simulated job sends.
    message = np.array(message)
    message[0] = sent["ok"]
    run_id = sent["run_id"].encode()
    message[1:] = 0
    message[1 : 1 + len(run_id)] = np.frombuffer(run_id, np.uint8)
    return message

  monkeypatch.setattr(
      jax.experimental.multihost_utils, "broadcast_one_to_all", broadcast
  )
  try:
    sent.update(ok=1, run_id=held.run_id)
    trainer.take_run_lock(str(workdir))  # Process 0 of this job holds it.

    sent.update(ok=1, run_id="another-launch")
    with pytest.raises(WorkdirError) as err:
      trainer.take_run_lock(str(workdir))
    assert re.fullmatch(
        rf"--workdir={re.escape(str(workdir))} is locked by run "
        rf"{held.run_id} \(pid {os.getpid()} on host .+\), but process 0 of "
        r"this job took run another-launch: is this job launched twice\?",
        str(err.value),
    ), str(err.value)

    sent.update(ok=0, run_id="")
    with pytest.raises(WorkdirError, match="process 0 could not take"):
      trainer.take_run_lock(str(workdir))
  finally:
    held.release()
