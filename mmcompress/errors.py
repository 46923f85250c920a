"""The errors `mmcompress` raises for a caller's mistake.

`UserError` marks a mistake of the caller's (an argument, a config field, a data folder, a
workdir), as opposed to a fault of the program: the command-line entry points print its
message as one line and exit with status 2, and let every other exception keep its traceback.
It is a ValueError, so code that catches ValueError keeps working.
"""

__all__ = ["MissingDataError", "UserError"]


class UserError(ValueError):
  """A mistake in what the caller passed; the message says what to change."""


class MissingDataError(UserError, FileNotFoundError):
  """A data set that is not where the caller said it is; also a FileNotFoundError."""
