"""The manifest of a job's finished parts: part id -> SHA-256 of each of its files.

It is rewritten atomically after every finished part, so a run killed at any moment leaves a
manifest that names only whole files. A resumed run skips a part only when its files are there
and their hashes match; a part computed twice (Dask may run a task again) is recorded once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import SegUnifyError
from .atomic import write_text_atomic

MANIFEST = "manifest.json"


class Manifest:
    """Part id -> {file kind: SHA-256}, for one job (named by its fingerprint)."""

    def __init__(self, folder: Path, job: str, parts: dict[str, dict[str, str]] | None = None,
                 resumed: bool = False):
        self.folder, self.job, self.parts = folder, job, parts or {}
        self.resumed = resumed  # True when this is the same job's manifest from an earlier run

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def open(cls, folder: Path, job: str, resume: bool, strict: bool = True) -> Manifest:
        """The job's manifest: the recorded parts when resuming the same job, else a new one.
        strict: a manifest of another job is an error (else it is dropped and the job starts over)."""
        path = folder / MANIFEST
        if resume and path.is_file():
            data = json.loads(path.read_text())
            if data.get("job") != job and not strict:
                return cls(folder, job)
            if data.get("job") != job:
                raise SegUnifyError(f"The unfinished run in '{folder}' was made with other inputs or settings; "
                                    "rerun with the same ones, or start over without resuming (--no-resume).")
            return cls(folder, job, data["parts"], resumed=True)
        return cls(folder, job)

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"job": self.job, "parts": self.parts}, indent=1, sort_keys=True))

    def record(self, part_id: str, hashes: dict[str, str]) -> None:
        self.parts[part_id] = hashes
        self.save()

    def has(self, part_id: str, files: dict[str, Path]) -> bool:
        """`part_id` is recorded with exactly these files, each there with its recorded hash."""
        recorded = self.parts.get(part_id)
        return (recorded is not None and set(recorded) == set(files)
                and all(path.is_file() and file_sha256(path) == recorded[kind] for kind, path in files.items()))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
