"""User-facing errors.

Every mistake a user can make (a bad config value, a missing data directory, an
unwritable workdir) raises a subclass of `UserError` whose message is one line
saying what to change. The command-line entry points print that line and exit
with a non-zero status instead of showing a traceback.

`is_int` and `is_number` are the value checks behind those messages, and
`show` the way they quote a value, shared by every module that validates a
setting.
"""

import math
import numbers
from typing import Any

import ml_collections


def is_int(value: Any, *, numpy: bool = False) -> bool:
  """An int that is not a bool; with ``numpy``, NumPy integers too (values
  that come from arrays rather than from a config file)."""
  kind = numbers.Integral if numpy else int
  return isinstance(value, kind) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """A finite int or float (bool, NaN and infinities are not numbers here)."""
  return (
      not isinstance(value, bool)
      and isinstance(value, (int, float))
      and math.isfinite(value)
  )


def first_line(error: BaseException, *, with_type: bool = False) -> str:
  """The first line of ``error``'s message (its type's name if it has none);
  ``with_type`` prefixes the type's name, for errors of other libraries."""
  text = str(error).strip()
  line = text.splitlines()[0] if text else ""
  if not line:
    return type(error).__name__
  return f"{type(error).__name__}: {line}" if with_type else line


class UserError(Exception):
  """A problem the user can fix; the message is one line saying how."""


class ConfigError(UserError):
  """A config field has a value the library cannot use."""


class DataError(UserError):
  """Data is missing, unreadable or inconsistent."""


class WorkdirError(UserError):
  """The workdir cannot be written, or holds checkpoints that can't be read."""


class NonFiniteError(UserError):
  """Training produced a non-finite loss or weights and stopped.

  The message names the step and the last checkpoint, which holds finite
  weights: checkpoints are checked before they are written.
  """


class Interrupted(Exception):
  """Training stopped early on SIGTERM or SIGINT after saving a checkpoint.

  Not an error: rerunning the same command resumes. The message is one line.

  Attributes:
    signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
    step: the step of the checkpoint just written.
  """

  def __init__(self, message: str, *, signal_name: str, step: int):
    super().__init__(message)
    self.signal_name = signal_name
    self.step = step


def show(value: Any) -> str:
  """``repr(value)`` on one line (a nested ConfigDict's repr spans several)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return " ".join(repr(value).split())
