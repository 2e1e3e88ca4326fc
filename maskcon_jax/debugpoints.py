"""Named points where a drill or a test can hold a run, to kill or inspect it.

The trainer calls `reached` at a few named points (`POINTS`). Nothing
happens unless the environment asks for a pause:

* ``MASKCON_DEBUG_PAUSE_AT=NAME`` or ``NAME@STEP`` (several, comma-separated):
  the process pauses there (``@STEP``: only at that step).
* ``MASKCON_DEBUG_PAUSE_DIR=DIR`` (optional): on pausing, the process writes
  its pid to ``DIR/paused-NAME`` (``paused-NAME@STEP`` with a step) and
  continues as soon as ``DIR/resume`` exists. A test waits for the first
  file, then kills the process or lets it go on.
* ``MASKCON_DEBUG_PAUSE_SECONDS`` (default 3600): the longest pause.

A paused process holds everything it held at that point (the run lock, an
unfinished checkpoint, a half-written file), which is what a kill there
should find.
"""

from __future__ import annotations

import os
import time

from absl import logging

PAUSE_AT = "MASKCON_DEBUG_PAUSE_AT"
PAUSE_DIR = "MASKCON_DEBUG_PAUSE_DIR"
PAUSE_SECONDS = "MASKCON_DEBUG_PAUSE_SECONDS"

# The points the trainer reaches, in the order of a run.
POINTS = (
    "lock_taken",  # Run lock held, nothing else written yet.
    "config_written",  # config.json written, no checkpoint manager yet.
    "train_step",  # Before the step numbered STEP + 1 (STEP done).
    "checkpoint_save",  # Checkpoint STEP's save started, not finished.
    "checkpoint_saved",  # Checkpoint STEP complete on disk.
    "final_eval",  # Training done, before the final evaluation.
    "results_write",  # results.json's temporary file written, not
    # yet renamed into place.
)


def _requests() -> list[tuple[str, str]]:
  spec = os.environ.get(PAUSE_AT) or ""
  return [
      (point, at.strip())
      for point, _, at in (
          item.strip().partition("@") for item in spec.split(",") if item
      )
  ]


def wanted(name: str) -> bool:
  """Whether ``$MASKCON_DEBUG_PAUSE_AT`` names point ``name`` at any step."""
  return any(point == name for point, _ in _requests())


def reached(name: str, step: int | None = None) -> None:
  """Pauses here if ``$MASKCON_DEBUG_PAUSE_AT`` names this point."""
  for point, at in _requests():
    if point != name or (at and (step is None or str(step) != at)):
      continue
    _pause(name if not at else f"{name}@{step}")
    return


def _pause(label: str) -> None:
  folder = os.environ.get(PAUSE_DIR)
  seconds = float(os.environ.get(PAUSE_SECONDS) or 3600)
  logging.warning(
      "Debug pause at %s (%s=%s).", label, PAUSE_AT, os.environ.get(PAUSE_AT)
  )
  resume = None
  if folder:
    resume = os.path.join(folder, "resume")
    marker = os.path.join(folder, f"paused-{label}")
    # Every process of a multi-process run may pause at the same point and
    # folder: each writes its own temporary file, or one process's rename
    # takes the file from under the other's.
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      f.write(f"{os.getpid()}\n")
    os.replace(tmp, marker)
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if resume and os.path.exists(resume):
      return
    time.sleep(0.02)
