"""One error type for every expected failure, so CLIs can tell a user's mistake from a bug."""


class InputError(Exception):
    """Bad input a user can fix: a missing, corrupt or mismatched file, a bad profile or argument.

    The message names the file and the problem. CLIs print it to stderr and exit 2; anything else
    that escapes is a bug and keeps its traceback.
    """
