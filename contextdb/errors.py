"""The one exception contextdb raises for bad input.

It subclasses nothing from ``middlebox`` so the package stays importable alone;
``contextdb.cli`` declares it as its commands' user error, which ``mpproxy`` prints as one
line (``mpproxy: error: ...``) and exits with 2.
"""


class ContextDBError(Exception):
    """Bad input a user can cause: a malformed trace file, a store made with other
    parameters, an unreachable fleet server, a bad query."""
