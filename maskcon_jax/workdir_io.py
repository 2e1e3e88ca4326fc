"""Writing into a run's workdir safely: whole files, one-line write errors.

`write_json_atomic` never leaves half a file. A failed write (a full disk,
a read-only file system), whether Python's OSError or the message orbax
passes on from TensorStore, becomes a one-line `WorkdirError` saying what
to do (`raise_if_write_failure`, `undo_on_write_error`), with the full
traceback in ``WORKDIR/debug.log``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
import traceback
from typing import Any

from absl import logging

from maskcon_jax import checkpoints
from maskcon_jax import debugpoints
from maskcon_jax import errors
from maskcon_jax.errors import Interrupted, UserError, WorkdirError

# Where the full tracebacks of a failed write go (the console gets one line).
DEBUG_LOG = "debug.log"


def write_json_atomic(
    path: str, payload: Any, *, debug_point: str | None = None
) -> None:
  """Writes JSON through a temporary file, so readers never see half a file.

  ``debug_point``: the `debugpoints` name of the moment between writing the
  temporary file and renaming it.
  """
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
    f.write("\n")
  if debug_point:
    debugpoints.reached(debug_point)
  os.replace(tmp, path)


# What TensorStore (orbax's writer) says instead of raising OSError: the
# errno, or failing that the words of the error.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_OS_ERROR_WORDS = tuple(
    (os.strerror(code), code)
    for code in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EIO,
    )
)
_FAILED_PATH = re.compile(r'(?:Failed writing|local file):? "([^"]+)"')


def _as_os_error(error: BaseException) -> OSError | None:
  """The file-system error behind ``error`` (None: another failure).

  ``error`` itself, one in its chain of causes, or the errno TensorStore
  names in its message ("... No space left on device [os_error_code='28']"),
  which orbax passes on as a ValueError.
  """
  seen, todo = set(), [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno is not None:
      return e
    text = str(e)
    path = _FAILED_PATH.search(text)
    path = path.group(1) if path else None
    code = _OS_ERROR_CODE.search(text)
    if code:
      return OSError(int(code.group(1)), os.strerror(int(code.group(1))), path)
    for words, code in _OS_ERROR_WORDS:
      if words in text:
        return OSError(code, words, path)
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return None


def raise_if_write_failure(workdir: str, error: BaseException) -> None:
  """Raises a one-line `WorkdirError` if ``error`` is a failed write.

  The line names the path, the error, the newest complete checkpoint (a
  failed save leaves only a temporary folder, which the next run deletes)
  and what to do; the full traceback goes to ``workdir/debug.log`` (if that
  can still be written).
  """
  if isinstance(error, (UserError, Interrupted)):
    return
  os_error = _as_os_error(error)
  if os_error is None:
    return
  log = os.path.join(workdir, DEBUG_LOG)
  try:
    with open(log, "a") as f:
      f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} write failure\n")
      f.write("".join(traceback.format_exception(error)))
    details = f" (details in {log})"
  except OSError:
    details = ""
  ckpt_dir = os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR)
  path = os.path.abspath(os_error.filename) if os_error.filename else None
  if path is None or path.startswith(ckpt_dir + os.sep):
    where = f"checkpoints in {ckpt_dir}" if path else f"--workdir={workdir}"
  else:
    where = path
  done = checkpoints.finished_steps(ckpt_dir)
  kept = (
      f"the newest complete checkpoint, step {max(map(int, done))}, is "
      "intact"
      if done
      else "no checkpoint is complete yet"
  )
  if os_error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
    todo = "free some space"
  elif os_error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    todo = "make it writable"
  else:
    todo = "check the disk"
  reason = os_error.strerror or os.strerror(os_error.errno)
  raise WorkdirError(
      f"cannot write {where}: {reason}; {kept}; {todo} and "
      f"rerun the same command to resume{details}."
  ) from error


def space_warning(ckpt_dir: str) -> str | None:
  """A warning when the disk of ``ckpt_dir`` has less room than its newest
  complete checkpoint takes (None: enough room, or no checkpoint yet)."""
  done = checkpoints.finished_steps(ckpt_dir)
  if not done:
    return None
  newest = os.path.join(ckpt_dir, max(done, key=int))
  size = 0
  for root, _, files in os.walk(newest):
    for name in files:
      try:
        size += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass  # Deleted meanwhile: only an estimate.
  try:
    free = shutil.disk_usage(ckpt_dir).free
  except OSError:
    return None
  if free >= size:
    return None
  return (
      f"only {free / 1e6:.1f} MB free on the disk of {ckpt_dir}, less than "
      f"the last checkpoint takes ({size / 1e6:.1f} MB): the next save "
      "may fail; free some space."
  )


def write_error_message(workdir: str, error: OSError) -> str:
  """The message of the one-line `WorkdirError` for ``error``, a failed
  write into ``workdir``: its reason and what to do."""
  reason = error.strerror or (
      os.strerror(error.errno) if error.errno else str(error)
  )
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    return (
        f"cannot write to --workdir={workdir}: {reason}; free some space "
        "or choose another --workdir."
    )
  return (
      f"cannot write to --workdir={workdir}: {reason}; choose a directory "
      "you can write to."
  )


@contextlib.contextmanager
def undo_on_write_error(workdir: str):
  """Turns a failed write (full disk, read-only file system) into a one-line
  ``WorkdirError`` and removes what the block added to ``workdir``."""
  path = os.path.abspath(workdir)
  created = None  # The outermost directory the block may create.
  probe = path
  while not os.path.exists(probe):
    created, probe = probe, os.path.dirname(probe)
  before = set(os.listdir(path)) if created is None else set()
  try:
    yield
  except OSError as e:
    try:
      if created is not None:
        shutil.rmtree(created, ignore_errors=True)
      else:
        for name in set(os.listdir(path)) - before:
          added = os.path.join(path, name)
          if os.path.isdir(added) and not os.path.islink(added):
            shutil.rmtree(added, ignore_errors=True)
          else:
            os.remove(added)
    except OSError:
      pass  # A read-only file system: nothing could be added either.
    raise WorkdirError(write_error_message(workdir, e)) from e


def read_saved_config(path: str) -> dict[str, Any] | None:
  """The config record a run saved at ``path`` (None: there is none yet).

  Raises:
    WorkdirError: the file cannot be read or holds no config.
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    reason = errors.first_line(e, with_type=True)
    raise WorkdirError(
        f"{path} cannot be read ({reason}); restore it "
        "or use a new --workdir."
    ) from e
  if not isinstance(saved, dict):
    raise WorkdirError(
        f"{path} does not hold a config; restore it or use a new --workdir."
    )
  return saved


def close_quietly(mngr, writer) -> None:
  """Finishes in-flight checkpoint writes and flushes the event files while
  another exception is on its way out; their own failures only get logged."""
  for action in (
      getattr(mngr, "wait_until_finished", None),
      getattr(mngr, "close", None),
      getattr(writer, "flush", None),
      getattr(writer, "close", None),
  ):
    if action is None:
      continue
    try:
      action()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning(
          "While stopping: %s", errors.first_line(e, with_type=True)
      )
