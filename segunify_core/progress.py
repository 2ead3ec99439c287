"""The progress callback every long-running function of the core takes (and the CLI and the
QGIS plugin's child process implement)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Progress(Protocol):
    """progress(phase, done, total[, stats]): `done` of `total` units of the named phase so far.

    Phases: "features" and "validation features" (windows through the backbone), "train" and
    "fit" (optimiser steps; "train" also passes `stats`, the step's loss and learning rate),
    "segment" (windows of a raster job), "evaluate" (images scored)."""

    def __call__(self, phase: str, done: int, total: int, stats: Mapping[str, float] | None = None) -> None: ...
