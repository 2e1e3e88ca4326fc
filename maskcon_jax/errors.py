"""User-facing errors.

Every mistake a user can make (a bad config value, a missing data directory, an
unwritable workdir) raises a subclass of `UserError` whose message is one line
saying what to change. The command-line entry points print that line and exit
with a non-zero status instead of showing a traceback.
"""


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
