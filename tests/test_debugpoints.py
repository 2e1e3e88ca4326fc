"""Named pause points (maskcon_jax.debugpoints). Killing runs at them:
tests/test_reliability.py."""

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

_PAUSE_MANY = """
import os, sys
from maskcon_jax import debugpoints
for i in range(int(sys.argv[1])):
  debugpoints.reached("point", i)
"""


def test_processes_pausing_at_one_point_do_not_collide(tmp_path):
  """Every process of a multi-process run pauses at the same point and
  writes the same marker: no process may lose its temporary file to
  another's rename (one did, and the run died with a write error)."""
  (tmp_path / "resume").touch()  # Mark the point, don't wait there.
  env = {
      **os.environ,
      "MASKCON_DEBUG_PAUSE_AT": "point",
      "MASKCON_DEBUG_PAUSE_DIR": str(tmp_path),
      "MASKCON_DEBUG_PAUSE_SECONDS": "60",
  }
  processes = [
      subprocess.Popen(
          [sys.executable, "-c", _PAUSE_MANY, "300"],
          env=env,
          cwd=REPO_ROOT,
          stderr=subprocess.PIPE,
          text=True,
      )
      for _ in range(3)
  ]
  errors = [p.communicate(timeout=120)[1] for p in processes]
  assert [p.returncode for p in processes] == [0, 0, 0], errors
  assert (tmp_path / "paused-point").exists()
  assert not list(tmp_path.glob("*.tmp"))
