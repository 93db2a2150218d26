"""Errors a user can cause, reported as one line and a non-zero exit, never a traceback."""


class UserError(Exception):
    """Bad input from the person running mpproxy: configuration, files, permissions.

    The CLI prints ``mpproxy: error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 2
