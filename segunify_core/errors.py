"""User-facing errors: one sentence naming the problem and the fix."""

from __future__ import annotations


class SegUnifyError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""


class CancelledError(SegUnifyError):
    """The run was interrupted (Ctrl-C, SIGTERM or a cancel request)."""
