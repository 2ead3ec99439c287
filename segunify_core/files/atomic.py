"""Atomic files: every file SegUnify writes appears whole or not at all.

A writer gets a temporary path beside its target (same folder, so the final `os.replace` is a
rename on one file system), writes there, and the rename happens only when the writer finished.
On any error or interruption the temporary path is removed. Temporary names follow one pattern,
`.<stem>.<random>.partial<suffix>`, which the QGIS plugin's clean-up after a hard kill also uses
(`partial_glob`).

An object store (an s3:// target) has no rename: there the writer gets a local temporary file, and
the finished file is uploaded as one object, which appears whole when its upload completes; on any
error before, nothing is uploaded and nothing is left in the bucket.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SegUnifyError, write_failure
from . import remote

TEMP_MARK = ".partial"


def partial_glob(target: str | os.PathLike) -> str:
    """Glob pattern of the temporary names `atomic_path(target)` can leave after a hard kill."""
    target = Path(target)
    return str(target.parent / f".{glob.escape(target.stem)}.*{TEMP_MARK}*")


def temp_beside(target: Path, suffix: str | None = None, directory: bool = False) -> Path:
    """A fresh temporary file (or folder) beside `target`, named by the module's pattern."""
    prefix, suffix = f".{target.stem}.", f"{TEMP_MARK}{target.suffix if suffix is None else suffix}"
    try:
        if directory:
            return Path(tempfile.mkdtemp(suffix, prefix, target.parent))
        handle, made = tempfile.mkstemp(suffix, prefix, target.parent)
    except OSError as exc:
        raise SegUnifyError(f"Cannot write '{target.name}' to the folder '{target.parent}' ({exc.strerror}); "
                            "choose an existing, writable folder.") from None
    os.close(handle)
    return Path(made)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None, directory: bool = False,
                empty: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` when the block ends normally.

    suffix: the temporary name's extension (default: the target's; drivers pick formats by it).
    directory: the temporary path is a folder (replaces a folder target whole).
    empty: the temporary file does not exist yet when yielded (for writers that refuse to
    overwrite, e.g. GeoPackage).
    """
    if remote.is_object_store(target):
        with _object_path(str(target), suffix, directory, empty) as tmp:
            yield tmp
        return
    target = Path(target)
    tmp = temp_beside(target, suffix, directory)
    if empty and not directory:
        tmp.unlink()
    try:
        yield tmp
        if directory and target.is_dir():
            _remove(target)
        os.replace(tmp, target)
    except OSError as exc:  # a full disk or a quota, whoever noticed it
        raise write_failure(target, exc) from None
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


@contextlib.contextmanager
def _object_path(target: str, suffix: str | None, directory: bool, empty: bool) -> Iterator[Path]:
    """A local temporary file for an object-store target, uploaded as one object at the end."""
    if directory:
        raise ValueError("an object store has no folders to replace whole")
    name = remote.name_of(target)
    stem, ext = os.path.splitext(name)
    with tempfile.TemporaryDirectory(prefix="segunify-upload-") as folder:
        tmp = Path(folder) / f".{stem}{TEMP_MARK}{ext if suffix is None else suffix}"
        if not empty:
            tmp.touch()
        yield tmp
        remote.upload(tmp, target)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))
