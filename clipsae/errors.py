"""The one exception type that reaches the user as a single line."""


class ClipsaeError(Exception):
    """A problem with the user's input or environment.

    The CLI prints ``error: <message>`` on one line and exits with status 1; no traceback.
    Raise it before anything is written whenever the problem can be known up front.
    """
