"""Errors a user can cause, reported as one line and a non-zero exit, never a traceback.

This is the product's. contextdb and netns, which never import the product, raise their
own (``ContextDBError``, ``TestbedError``) and their commands declare them to the CLI as
``user_errors`` (``middlebox/cli.py``).
"""


class UserError(Exception):
    """Bad input from the person running mpproxy: configuration, files, permissions.

    The CLI prints ``mpproxy: error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 2
