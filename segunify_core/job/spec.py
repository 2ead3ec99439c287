"""The job spec: one segmentation job, built once (CLI, API or plugin) and passed unchanged on.

`JobSpec` says what to do: inputs and outputs, the model file or the self-fit settings, the
segmentation settings (`settings.SegmentOptions`), the CRF and the engine. It is frozen and
JSON-serialisable; planning, the parts, the workers and assembly all read it. What the driver
resolves while running (the device, the precision, the model file the workers load and its hash)
travels beside it as `RunFacts`, so the spec itself stays what the user asked for.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import settings
from ..settings import SegmentOptions, SelfFitOptions


@dataclasses.dataclass(frozen=True)
class JobSpec:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    options: SegmentOptions = SegmentOptions()
    model_file: str | None = None  # None: a model given in memory (API), or self-fit
    fit: SelfFitOptions | None = None  # self-fit settings, when there is no model
    backbone: str | None = None  # the self-fit's backbone
    backbone_weights: str | None = None  # as asked for (--backbone-weights)
    crf: str = settings.CRF
    cluster: str | None = None  # engine: local[:N] (--cluster), a scheduler address or file; none: in-process
    scheduler: str | None = None
    scheduler_file: str | None = None
    job_folder: str | None = None  # part files and manifest (default: hidden folder beside the output)
    keep_going: bool = False  # a raster that fails is reported instead of stopping the job

    @classmethod
    def build(cls, inputs: Sequence[str | Path], outputs: Sequence[str | Path], options: SegmentOptions,
              **fields: Any) -> JobSpec:
        """A spec with paths as text (None stays None)."""
        text: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}
        return cls(tuple(map(str, inputs)), tuple(map(str, outputs)), options, **text)

    def result(self) -> dict[str, Any]:
        """What defines the result, for the resume fingerprint: the settings marked `result` in
        their declaration, the CRF, and for a self-fit its settings and backbone."""
        fit = settings.result_values(self.fit) if self.fit is not None else None
        return {"options": settings.result_values(self.options), "fit": fit, "crf": self.crf,
                "backbone": self.backbone if self.fit is not None else None}

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["options"] = settings.as_json_dict(self.options)
        data["fit"] = settings.as_json_dict(self.fit) if self.fit is not None else None
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        data["inputs"], data["outputs"] = tuple(data["inputs"]), tuple(data["outputs"])
        data["options"] = SegmentOptions.from_dict(data["options"])
        data["fit"] = SelfFitOptions.from_dict(data["fit"]) if data["fit"] is not None else None
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the driver resolved for this run; workers receive it beside the spec."""

    parts_dir: str
    device: str = settings.DEVICES[1]  # cpu; the driver resolves settings.DEVICE (auto) to cpu or cuda
    precision: str = settings.PRECISION  # the backbone's precision as chosen for the device
    fuse: bool | str = "auto"  # the backbone's CPU graph fusion (Backbone.fuse)
    model_file: str | None = None  # for workers: the model they load (once per process)
    model_sha256: str | None = None
    backbone_weights: str | None = None  # asked for, or recorded in the model file

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
