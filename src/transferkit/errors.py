"""The one exception type users see.

Anything wrong with the user's data, parameters or environment raises
TransferkitError with a message that names the file or key and what is wrong.
Stage scripts print it and exit 1 without a stack trace; a stack trace means a
bug in transferkit.
"""


class TransferkitError(Exception):
    """A problem the user can fix (bad data, bad params, missing file)."""
