"""User-facing errors: bad input, named in one line.

A ``HybridReasonError`` is the user's mistake (a bad recipe key, a malformed file row, a missing
checkpoint). Its message is one line that names the culprit; the ``hybrid-reason`` entry point
prints it as ``error: ...`` and exits 2, with no traceback. Every other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations


class HybridReasonError(ValueError):
    """Bad input from the user; the message is one line naming the culprit (key, file and row, path)."""

    def __init__(self, message: str):
        super().__init__(" ".join(line.strip() for line in str(message).splitlines()))  # one line, always
