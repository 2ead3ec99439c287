"""User-facing errors: one sentence naming the problem and the fix."""

from __future__ import annotations


class SegUnifyError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""


def write_failure(path, exc: BaseException) -> SegUnifyError:
    """Errors while writing are nearly always a full disk, a quota or a file-size limit."""
    detail = error_detail(exc)
    return SegUnifyError(f"Writing '{path}' failed{detail}: the disk is full or a quota/file-size limit was "
                         "reached; free space or write to another disk.")


def error_detail(exc: BaseException) -> str:
    """' (last line of the error)' or '' when it says nothing (GDAL's 'See previous exception')."""
    lines = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()
    if not lines or "See previous exception" in lines[-1]:
        return ""
    return f" ({lines[-1][:120]})"
