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
