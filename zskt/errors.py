"""The exceptions that end a command with one line on stderr. Only `zskt.run`, the entry point,
turns them into an exit status; everything else raises them.

`zskt.run` turns a `UserError` (a mistake a user can fix) into a single line on stderr and exit
status 2, so its message must say what is wrong *and* what to change.
"""


class UserError(Exception):
    """Bad input from the user: a config value, a path, a checkpoint."""


class RunStopped(Exception):
    """A run that ended before its end: diverged, or stopped by SIGTERM or Ctrl-C. The message is its
    one line for stderr (what happened, what is saved, how to go on); `zskt.run` exits with `status`."""

    def __init__(self, line: str, status: int) -> None:
        super().__init__(line)
        self.status = status


class RefusedBeforeRun(BaseException):
    """A user's mistake found in a Hydra callback, before Hydra creates the run dir (a run dir that
    cannot be a folder); `zskt.run` reports it as a `UserError`. A BaseException, as SystemExit is:
    Hydra turns a callback's Exceptions into warnings and goes on."""
