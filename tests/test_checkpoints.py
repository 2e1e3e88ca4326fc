"""What of `maskcon_jax.checkpoints` no run in the other tests reaches: the
log filter of the command-line tools, and setting a checkpoint aside twice.
Restoring is tested through whole runs (tests/test_reliability.py,
tests/test_legacy_workdirs.py, tests/test_parallel.py)."""

import logging
import os

from maskcon_jax import checkpoints


def _record(level, pathname):
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_hide_checkpoint_chatter_drops_only_orbax_info():
  keep = checkpoints.HideCheckpointChatter().filter
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not keep(_record(logging.INFO, orbax))
  assert keep(_record(logging.WARNING, orbax))
  assert keep(_record(logging.INFO, "/repo/maskcon_jax/trainer.py"))


def test_set_aside_keeps_an_earlier_copy(tmp_path):
  """A step set aside before (a run that failed again) keeps its copy: the
  new one gets a timestamp."""
  for _ in range(2):
    os.makedirs(tmp_path / checkpoints.CHECKPOINT_DIR / "8")
    checkpoints.set_aside(str(tmp_path), [8])
  names = sorted(os.listdir(tmp_path / checkpoints.CORRUPT_DIR))
  assert names[0] == "8" and names[1].startswith("8.") and len(names) == 2
  assert os.listdir(tmp_path / checkpoints.CHECKPOINT_DIR) == []
