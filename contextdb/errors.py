"""The one exception contextdb raises for bad input.

It subclasses nothing from ``middlebox`` so the package stays importable alone;
``contextdb.cli`` turns it into ``middlebox.errors.UserError`` for the command line.
"""


class ContextDBError(Exception):
    """Bad input a user can cause: a malformed trace file, a store made with other
    parameters, an unreachable fleet server, a bad query."""
