"""User-facing errors.

Every problem a user can fix (bad path, bad option, empty data) raises :class:`EavssError` with a
one-line message that names the problem and the fix. The CLI prints it as ``eavss: error: ...``
and exits with status 2, never with a traceback.
"""

from __future__ import annotations


class EavssError(Exception):
    """A problem in the user's input or environment, described in one line with its fix."""

    def __init__(self, message: str):
        if "\n" in message:
            message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message)


class NonFiniteActivationError(EavssError):
    """A hooked activation contained NaN or Inf; the message names the layer."""
