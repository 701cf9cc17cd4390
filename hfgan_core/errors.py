"""One exception type for problems the user can fix.

The command line prints its message as a single line and exits non-zero, so
every message must name the problem *and* the fix.
"""


class UserError(Exception):
    """Bad input, missing data or an impossible setting (not a bug in our code)."""
