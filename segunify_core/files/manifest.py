"""The manifest of a job's finished parts: part id -> SHA-256 of each of its files.

It is rewritten atomically after every finished part, so a run killed at any moment leaves a
manifest that names only whole files. A resumed run skips a part only when its files are there
and their hashes match; a part computed twice (Dask may run a task again) is recorded once.
The folder may be an object-store prefix (s3://): the manifest is then the job's commit point
there too, an object replaced whole by each save, naming only part objects that were complete.
"""

from __future__ import annotations

import json

from ..errors import SegUnifyError
from . import remote
from .atomic import write_text_atomic
from .remote import Location

MANIFEST = "manifest.json"


class Manifest:
    """Part id -> {file kind: SHA-256}, for one job (named by its fingerprint)."""

    def __init__(self, folder: Location, job: str, parts: dict[str, dict[str, str]] | None = None,
                 resumed: bool = False):
        self.folder, self.job, self.parts = folder, job, parts or {}
        self.resumed = resumed  # True when this is the same job's manifest from an earlier run

    @property
    def path(self) -> Location:
        return remote.join(self.folder, MANIFEST)

    @classmethod
    def open(cls, folder: Location, job: str, resume: bool, strict: bool = True) -> Manifest:
        """The job's manifest: the recorded parts when resuming the same job, else a new one.
        strict: a manifest of another job is an error (else it is dropped and the job starts over)."""
        path = remote.join(folder, MANIFEST)
        if resume and remote.is_file(path):
            data = json.loads(remote.read_bytes(path))
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

    def has(self, part_id: str, files: dict[str, Location]) -> bool:
        """`part_id` is recorded with exactly these files, each there with its recorded hash."""
        recorded = self.parts.get(part_id)
        return (recorded is not None and set(recorded) == set(files)
                and all(remote.is_file(path) and file_sha256(path) == recorded[kind] for kind, path in files.items()))


def file_sha256(path: Location) -> str:
    """SHA-256 of a file (or of an object in an object store)."""
    return remote.sha256(path)
