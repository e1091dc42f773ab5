"""The one error type users see.

Library code raises ``ExpoError`` with a sentence a user can act on; the CLI catches it once,
prints it on one line without a traceback and exits with ``exit_code``. Library code never calls
``sys.exit``.
"""

from __future__ import annotations


class ExpoError(Exception):
    """A failure the user can fix; ``exit_code`` 2 means bad input, as click uses for usage errors."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
