"""``UserError``: the base of every error a user can cause and fix (bad arguments, a missing file, a trace of another
version, ...). Its message is one line: what is wrong and what is allowed. The apps in ``experiments/`` print it
as ``error: <message>`` and exit with code 2; anything else is a bug and keeps its traceback.

(``policies`` raises its own ``UnknownPolicyError`` / ``PolicyParamError``: it imports nothing of ours.)
"""

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input a user can fix; ``str(err)`` is the one line to show."""
