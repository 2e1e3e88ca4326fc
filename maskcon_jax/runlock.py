"""One training process per workdir: the run lock ``WORKDIR/run.lock``.

A training run takes the lock before it writes anything and releases it when
it ends, however it ends (normally, with an error, on SIGTERM or SIGINT). A
second training process on the same workdir then stops at once with one line
naming the holder, instead of writing checkpoints into the same folder.
Read-only tools (evaluate, export, embed, compare on finished runs) never
take it.

How it works, and why this way:

* The file holds one JSON object: the holder's pid, host, start time and a
  run id (`Holder`), for the error message and for stale locks.
* The holder keeps the file open with an exclusive ``fcntl.flock`` for its
  whole life. The kernel drops that lock when the process dies, even by
  SIGKILL, so on one host "is the holder alive?" is answered by the lock
  itself, not by the pid in the file (pids get reused). ``O_CREAT|O_EXCL``
  alone would leave a file behind after every SIGKILL and force a guess from
  the pid.
* The file is unlinked on release while still locked. A process that opened
  it just before then gets the lock on an unlinked file; every taker
  therefore checks, after locking, that the path still names the file it
  locked, and starts over if not.
* A file left by a dead process (same host, lock free) is taken over with a
  warning. A file written on another host is honoured even when it is not
  locked: ``flock`` does not reach across hosts on every network file
  system, and the pid means nothing here. ``force`` (the config's
  ``force_unlock``) takes it over.
* On a file system without ``flock`` (it fails with ENOLCK or EOPNOTSUPP) the
  lock falls back to the pid: a holder on this host whose pid is alive is
  honoured. Two processes starting in the same instant could then both take
  it; that case is not covered.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

from absl import logging

from maskcon_jax.errors import WorkdirError

LOCK_FILE = "run.lock"

# flock fails with these where the file system does not support it.
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds (or last held) a run lock."""

  pid: int
  host: str
  started: float  # time.time() when the lock was taken.
  run_id: str

  def describe(self) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
    return (
        f"pid {self.pid} on host {self.host}, started {when}, run id "
        f"{self.run_id}"
    )

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

  @classmethod
  def from_json(cls, text: str) -> "Holder":
    """Raises ValueError unless ``text`` is a complete lock record."""
    data = json.loads(text)
    if not isinstance(data, dict):
      raise ValueError("not a JSON object")
    return cls(
        pid=int(data["pid"]),
        host=str(data["host"]),
        started=float(data["started"]),
        run_id=str(data["run_id"]),
    )


def new_run_id() -> str:
  return uuid.uuid4().hex[:12]


def read_holder(workdir: str) -> Holder | None:
  """The holder named by ``workdir``'s lock file (None: no readable file).

  Reads without locking; the file may be gone or half-written by the time
  the caller acts on the answer.
  """
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return Holder.from_json(f.read())
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Alive, but another user's.
  return True


def _read_fd(fd: int) -> str:
  chunks = []
  offset = 0
  while True:
    chunk = os.pread(fd, 65536, offset)
    if not chunk:
      return b"".join(chunks).decode("utf-8", errors="replace")
    chunks.append(chunk)
    offset += len(chunk)


class RunLock:
  """The run lock of one workdir (see the module docstring).

  Use as ``lock = RunLock(workdir); lock.acquire(); ... lock.release()``.
  `acquire` creates ``workdir`` if needed; `release` removes the folders it
  created if they are still empty, so a run that fails before writing
  anything leaves no trace.
  """

  def __init__(self, workdir: str, run_id: str | None = None):
    self.workdir = workdir
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.holder = Holder(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=time.time(),
        run_id=run_id or new_run_id(),
    )
    self._fd: int | None = None
    self._created: list[str] = []  # Folders acquire made, deepest first.
    self._previous_sigterm: Any = None

  @property
  def run_id(self) -> str:
    return self.holder.run_id

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self, *, force: bool = False) -> None:
    """Takes the lock or raises `WorkdirError` (one line) without writing.

    Args:
      force: take over a lock written on another host (`Holder.host`) that
        this host cannot check.

    Raises:
      WorkdirError: a live process holds the lock, a host other than this
        one wrote it (without ``force``), or the workdir can't be written.
    """
    if self._fd is not None:
      return
    try:
      self._make_workdir()
      for _ in range(10):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
          if self._try_take(fd, force):
            self._fd = fd
            break
        except BaseException:
          os.close(fd)
          raise
        os.close(fd)
      else:
        raise WorkdirError(
            f"cannot take the run lock {self.path}: it keeps changing; is "
            "another training process starting on this --workdir?"
        )
    except OSError as e:
      self._remove_created()
      reason = e.strerror or str(e)
      raise WorkdirError(
          f"cannot write to --workdir={self.workdir}: {reason}; "
          + (
              "free some space or choose another --workdir."
              if e.errno in (errno.ENOSPC, errno.EDQUOT)
              else "choose a directory you can write to."
          )
      ) from e
    except BaseException:
      self._remove_created()
      raise
    self._install_sigterm_handler()

  def _try_take(self, fd: int, force: bool) -> bool:
    """Locks and claims the open lock file ``fd``; False: start over."""
    has_flock = True
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder_of(fd)
      raise WorkdirError(self._in_use(holder)) from None
    except OSError as e:
      if e.errno not in _NO_FLOCK:
        raise
      has_flock = False
    try:
      same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
    except FileNotFoundError:
      same = False
    if not same:
      return False  # Released (unlinked) while we opened it.
    text = _read_fd(fd)
    if text.strip():
      try:
        previous = Holder.from_json(text)
      except (ValueError, KeyError, TypeError):
        logging.warning(
            "Taking over the run lock %s, which holds no valid "
            "record (a process that died while taking it?).",
            self.path,
        )
      else:
        self._check_previous(previous, has_flock, force)
    os.ftruncate(fd, 0)
    os.pwrite(fd, self.holder.to_json().encode(), 0)
    os.fsync(fd)
    return True

  def _check_previous(
      self, previous: Holder, has_flock: bool, force: bool
  ) -> None:
    """Raises unless the lock ``previous`` left may be taken over."""
    if previous.host != self.holder.host:
      if not force:
        raise WorkdirError(
            f"--workdir={self.workdir} is locked by a run on another host "
            f"({previous.describe()}); if that run has ended, rerun with "
            "--config.force_unlock=True, else use another --workdir."
        )
      logging.warning(
          "Taking over the run lock of %s from another host (%s): "
          "config.force_unlock is set.",
          self.workdir,
          previous.describe(),
      )
      return
    if not has_flock and _pid_alive(previous.pid):
      raise WorkdirError(self._in_use(previous))
    logging.warning(
        "Taking over the run lock of %s left by a process that "
        "ended without releasing it (%s).",
        self.workdir,
        previous.describe(),
    )

  def _in_use(self, holder: Holder | None) -> str:
    who = holder.describe() if holder else "a process that is starting up"
    stop = f"stop it (kill {holder.pid}), " if holder else ""
    return (
        f"--workdir={self.workdir} is in use by another training run "
        f"({who}); wait for it to end, {stop}or use another --workdir."
    )

  def _make_workdir(self) -> None:
    path = os.path.abspath(self.workdir)
    missing = []
    while not os.path.exists(path):
      missing.append(path)
      path = os.path.dirname(path)
    if missing:
      os.makedirs(missing[0], exist_ok=True)
    self._created = missing  # Deepest first.

  def _remove_created(self) -> None:
    for path in self._created:
      try:
        os.rmdir(path)
      except OSError:
        break  # Not empty: the run wrote into it, keep it and its parents.
    self._created = []

  def release(self) -> None:
    """Removes the lock file and unlocks; safe to call twice."""
    self._restore_sigterm_handler()
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
        os.unlink(self.path)
    except OSError as e:
      logging.warning(
          "Could not remove the run lock %s (%s); the next run "
          "takes it over.",
          self.path,
          e,
      )
    finally:
      os.close(fd)  # Drops the flock.
    self._remove_created()

  def __enter__(self) -> "RunLock":
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  # SIGTERM outside the training loop (loading data, compiling, the final
  # evaluation) would kill the process without running `release`. The lock
  # would still be taken over by the next run, with a warning; exiting
  # through Python instead releases it cleanly. The training loop installs
  # its own handler (signals.StopSignals) and restores this one after.

  def _install_sigterm_handler(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
      return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    self._previous_sigterm = signal.SIG_DFL

  def _restore_sigterm_handler(self) -> None:
    if self._previous_sigterm is None:
      return
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
      signal.signal(signal.SIGTERM, self._previous_sigterm)
    self._previous_sigterm = None


def _exit_on_sigterm(signum, frame) -> None:
  del frame
  raise SystemExit(128 + signum)


def _holder_of(fd: int) -> Holder | None:
  try:
    return Holder.from_json(_read_fd(fd))
  except (OSError, ValueError, KeyError, TypeError):
    return None
