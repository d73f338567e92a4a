"""The one exception type that reaches a user as a single sentence."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it.

    The command-line entry points catch it, print the message on one line and exit
    with status 2, so no traceback reaches the user.
    """
