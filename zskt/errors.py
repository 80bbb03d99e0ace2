"""The one exception type for mistakes a user can fix.

`zskt.run` turns a `UserError` into a single line on stderr and exit status 2, so its
message must say what is wrong *and* what to change.
"""


class UserError(Exception):
    """Bad input from the user: a config value, a path, a checkpoint."""
