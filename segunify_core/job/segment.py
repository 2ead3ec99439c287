"""Segmenting rasters of any size: plan the parts, run every part, assemble the outputs.

This is the whole single-machine path and the whole distributed path: the engine that runs the
parts is the only difference (this process, or a Dask cluster). One window flows: read
(resampled to the model's GSD) -> fill invalid pixels -> backbone features -> code ->
log-probabilities -> optional CRF -> probabilities on source pixels -> tapered blend -> part file
-> assembled raster on exactly the input's grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import settings
from ..device import api_device
from ..errors import SegUnifyError
from ..files import remote
from ..files.atomic import atomic_path
from ..files.manifest import Manifest, file_sha256
from ..files.model_file import load_model, save_model
from ..files.raster_io import open_raster
from ..files.remote import Location, location
from ..method.backbone import Backbone
from ..method.model import SegUnifyModel
from ..method.student import tile_geometry
from ..progress import Progress
from ..settings import SegmentOptions, SelfFitOptions
from .assembly import assemble
from .engines import as_client, run_parts
from .parts import gdal_env, part_files
from .planning import Geometry, Part, RasterJob, parts_to_json, plan
from .selffit import self_fit
from .spec import JobSpec, RunFacts

if TYPE_CHECKING:
    from ..method.crf import CRF

log = logging.getLogger("segunify")
FIT_MODEL = "self-fit.safetensors"
JOB_MODEL = "model.safetensors"

__all__ = ["JobReport", "JobSpec", "SegmentOptions", "SegmentReport", "SelfFitOptions", "run_job", "segment",
           "segment_raster"]


@dataclasses.dataclass
class RasterResult:
    input: str
    output: str
    width: int
    height: int
    windows: int
    scale: float
    error: str | None = None


@dataclasses.dataclass
class JobReport:
    rasters: list[RasterResult]
    parts: int
    computed: list[str]  # part ids computed by this run, in the order they finished
    reused: int  # parts taken from an interrupted run's manifest
    classes: int
    device: str
    precision: str
    model: SegUnifyModel
    manifest: dict[str, dict[str, str]]
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # plan, fit, run, assemble

    @property
    def failed(self) -> list[RasterResult]:
        return [r for r in self.rasters if r.error]


@dataclasses.dataclass
class SegmentReport:
    output: str
    width: int
    height: int
    windows: int
    classes: int
    device: str
    precision: str
    scale: float
    model: SegUnifyModel
    parts: int = 1
    computed: int = 1
    reused: int = 0


def default_job_folder(outputs: Sequence[Location]) -> Location:
    """Hidden folder beside the output(s) for part files and the manifest (a prefix beside an
    output in an object store)."""
    first = location(outputs[0])
    name = f".{remote.name_of(first)}.parts" if len(outputs) == 1 else ".segunify-parts"
    return remote.join(remote.parent_of(first), name)


def _check_outputs(inputs: Sequence[Location], outputs: Sequence[Location], overwrite: bool) -> None:
    for src, dst in zip(inputs, outputs, strict=True):
        if remote.is_url(str(dst)):
            if not remote.is_object_store(dst):
                raise SegUnifyError(f"Output '{dst}' cannot be written: outputs go to a local path or an s3:// URL.")
            if src == dst:
                raise SegUnifyError("The output path equals the input path; inputs are never modified, choose "
                                    "another output.")
            if not overwrite and remote.exists(dst):
                raise SegUnifyError(f"Output '{dst}' already exists; choose another output or allow replacing it "
                                    "(--overwrite).")
            continue
        assert isinstance(dst, Path)
        if dst.exists() and not overwrite:
            raise SegUnifyError(f"Output '{dst}' already exists; choose another output or allow replacing it "
                                "(--overwrite).")
        if not dst.parent.is_dir():
            raise SegUnifyError(f"Output folder '{dst.parent}' does not exist; create it first.")
        if not os.access(dst.parent, os.W_OK):
            raise SegUnifyError(f"Output folder '{dst.parent}' is not writable; choose another output path.")
        if isinstance(src, Path) and src.resolve() == dst.resolve():
            raise SegUnifyError("The output path equals the input path; inputs are never modified, choose "
                                "another output.")


def _model_digest(model: SegUnifyModel) -> str:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True).encode())
    for name, tensor in sorted(model.head_state().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fingerprint(parts: Sequence[Part], job: JobSpec, model: SegUnifyModel | None) -> str:
    """Names the job: the same parts, inputs, model and result-defining settings (those marked
    `result` in settings.py) give the same fingerprint."""
    files = sorted({(p.raster.input, *map(str, remote.stat_key(p.raster.input))) for p in parts})
    payload = json.dumps({"parts": parts_to_json(parts), "settings": job.result(), "files": files,
                          "model": _model_digest(model) if model is not None else None},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def segment(inputs: Sequence[str | Path], outputs: Sequence[str | Path], model: SegUnifyModel | None,
            options: SegmentOptions, crf: CRF | None = None, fit: SelfFitOptions | None = None,
            backbone: Backbone | None = None, backbone_weights: str | Path | None = None,
            client: Any = None, model_file: str | Path | None = None, job_folder: str | Path | None = None,
            keep_going: bool = False, progress: Progress | None = None) -> JobReport:
    """Segment rasters into class rasters (uint8, 1..K, 0 = nodata) on each input's exact grid.

    Plan -> run every part (in this process, or on a Dask cluster when `client` is a
    `distributed.Client` or a scheduler address) -> assemble. Without a model, `fit` and
    `backbone` are required and a model is first fitted on windows of all inputs, here.
    Cluster workers load the model from `model_file` (or from a copy written to the job folder),
    with `backbone_weights` when given, so they must see the same file system as this process.
    keep_going: a raster that fails is reported in the result instead of stopping the job.
    The arguments become one `JobSpec`; see `run_job`.
    """
    job = JobSpec.build(inputs, outputs, options, model_file=model_file, fit=fit if model is None else None,
                        backbone=backbone.spec.name if model is None and backbone is not None else None,
                        backbone_weights=backbone_weights, crf=crf.name if crf is not None else "none",
                        scheduler=client if isinstance(client, str) else None, job_folder=job_folder,
                        keep_going=keep_going)
    return run_job(job, model, backbone, crf, client, progress)


def run_job(job: JobSpec, model: SegUnifyModel | None = None, backbone: Backbone | None = None,
            crf: CRF | None = None, client: Any = None, progress: Progress | None = None) -> JobReport:
    """Run a job spec. The objects the spec names are passed in, loaded: the model (of
    `job.model_file`, or in memory), or the backbone for a self-fit; the CRF of `job.crf`; the
    Dask client of the spec's engine (None: in this process)."""
    options = job.options
    in_paths, out_paths = [location(p) for p in job.inputs], [location(p) for p in job.outputs]
    _check_outputs(in_paths, out_paths, options.overwrite)
    fit = job.fit
    if model is not None:
        patch = model.config.patch_size
    elif fit is not None and backbone is not None:
        patch = backbone.patch_size
    else:
        raise SegUnifyError("No model given; choose a model file (--model MODEL) or a number of classes to fit "
                            "on the input (--classes K).")
    window, stride = tile_geometry(options.window, options.stride, model)  # a fast model's own tiles by default
    if window % patch or stride % patch:
        raise SegUnifyError(f"The window ({options.window}, --window) and stride ({options.stride}, --stride) "
                            f"must be multiples of the backbone's patch size {patch}.")
    bands = options.bands if options.bands is not None else (model.config.bands if model else None)
    geometry = Geometry(window, stride, patch, model.config.gsd if model else None,
                        options.native_resolution)
    client = as_client(client)
    device = api_device(options.device)
    folder = location(job.job_folder) if job.job_folder else default_job_folder(out_paths)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    with gdal_env():
        parts = _plan_checked(in_paths, out_paths, geometry, bands, model, options)
    seconds["plan"] = time.perf_counter() - clock
    name = fingerprint(parts, job, model)
    # batch (keep_going) skips finished outputs, so its rerun can be a smaller job: start that one over
    manifest = Manifest.open(folder, name, options.resume, strict=not job.keep_going)
    if not manifest.resumed:
        # a new job: clear what another run left, and record the job at once, so that a run killed
        # before its first part (during self-fit) still resumes with the model it fitted
        remote.remove_tree(folder)
        remote.make_folder(folder)
        manifest.save()
    finished = False
    try:
        if model is None:
            clock = time.perf_counter()
            assert fit is not None and backbone is not None  # checked on entry; tells the type checker
            model = _fitted_model(folder, parts, backbone, fit, device, options, progress, manifest)
            seconds["fit"] = time.perf_counter() - clock
        model = model.to(device).eval()
        n = model.n_classes
        if n > settings.MAX_CLASSES:
            raise SegUnifyError(f"The model has {n} classes but a class raster holds at most {settings.MAX_CLASSES}; "
                                "merge classes (`segunify classes --merge`) or fit fewer (--classes).")
        precision = getattr(model.backbone, "precision", settings.PRECISION)
        recorded = getattr(model.backbone, "weights", None)
        backbone_weights = job.backbone_weights
        if backbone_weights is None and recorded is not None:
            backbone_weights = recorded.path  # cluster workers load the same checkpoint
        facts = RunFacts(str(folder), device=device.type, precision=precision,
                         fuse=getattr(model.backbone, "fuse", "auto"), backbone_weights=_opt_str(backbone_weights))
        if client is not None:
            facts = _with_model_file(facts, model, job.model_file, folder)
        report = _run_and_assemble(parts, job, facts, manifest, model, crf, client, progress)
        report.device, report.precision = device.type, precision
        report.seconds = {**seconds, **report.seconds}
        finished = not report.failed
        return report
    finally:
        if finished or not options.resume:
            remote.remove_tree(folder)


def _opt_str(value) -> str | None:
    return str(value) if value else None


def _plan_checked(inputs, outputs, geometry, bands, model, options) -> list[Part]:
    """The job's parts, after checking that every input has the bands the model was trained on."""
    if options.bands is None and model is not None and model.config.bands:
        for src in inputs:
            with open_raster(src) as ds:
                if max(model.config.bands) > ds.count:
                    raise SegUnifyError(
                        f"The model was trained on bands {','.join(map(str, model.config.bands))} but '{src}' has "
                        f"{ds.count} band(s); choose its bands (--bands).")
    probabilities = [options.probabilities] * len(inputs) if options.probabilities else None
    return plan(inputs, outputs, geometry, bands, probabilities, options.block)


def _fitted_model(folder: Location, parts: Sequence[Part], backbone: Backbone, fit: SelfFitOptions,
                  device: torch.device, options: SegmentOptions, progress: Progress | None,
                  manifest: Manifest) -> SegUnifyModel:
    """Self-fit once on the driver; a resumed run reuses the model it fitted before."""
    path = remote.join(folder, FIT_MODEL)
    if options.resume and remote.is_file(path):
        if isinstance(path, Path):
            return load_model(path, backbone=backbone)
        with tempfile.TemporaryDirectory(prefix="segunify-model-") as tmp:
            remote.download(path, Path(tmp) / FIT_MODEL)
            return load_model(Path(tmp) / FIT_MODEL, backbone=backbone)
    rasters = list({p.raster.index: p.raster for p in parts}.values())
    model = self_fit(rasters, backbone.to(device), fit, device, options.flip, progress)
    _save_model(model, path)
    return model


def _save_model(model: SegUnifyModel, path: Location) -> None:
    """The model file in the job folder (an object in an object store)."""
    if isinstance(path, Path):
        save_model(model, path)
        return
    with atomic_path(path) as tmp:
        save_model(model, tmp)


def _with_model_file(facts: RunFacts, model: SegUnifyModel, model_file, folder: Location) -> RunFacts:
    """Workers load the model from a file: the one given, or a copy in the job folder (an object
    there when the job folder is in an object store: workers then need no shared file system)."""
    path: Location | None = location(model_file) if model_file else None
    if path is None:
        fitted = remote.join(folder, FIT_MODEL)
        path = fitted if remote.is_file(fitted) else remote.join(folder, JOB_MODEL)
        if remote.name_of(path) == JOB_MODEL:
            _save_model(model, path)
    name = str(path.resolve()) if isinstance(path, Path) else path
    return dataclasses.replace(facts, model_file=name, model_sha256=file_sha256(path))


def _run_and_assemble(parts: list[Part], job: JobSpec, facts: RunFacts, manifest: Manifest, model: SegUnifyModel,
                      crf: CRF | None, client, progress: Progress | None) -> JobReport:
    options, keep_going = job.options, job.keep_going
    rasters: dict[int, RasterJob] = {}
    by_raster: dict[int, list[Part]] = {}
    for part in parts:
        rasters[part.raster.index] = part.raster
        by_raster.setdefault(part.raster.index, []).append(part)
    todo = [p for p in parts if not manifest.has(p.id, part_files(manifest.folder, p))]
    reused = len(parts) - len(todo)
    if reused:
        log.info("resuming: %d of %d parts are already done", reused, len(parts))
    total = sum(len(p.tiles()) for p in parts)
    done = total - sum(len(p.tiles()) for p in todo)

    errors: dict[int, str] = {}
    computed: list[str] = []
    waiting = {index: {p.id for p in todo if p.raster.index == index} for index in rasters}
    assemble_s = [0.0]

    def finish(index: int) -> None:
        """Assemble a raster as soon as its last part is in: finished files appear as the job goes."""
        clock = time.perf_counter()
        try:
            assemble(rasters[index], by_raster[index], manifest.folder, model.legend, options.cog,
                     options.probabilities_dtype, options.preview if len(rasters) == 1 else None)
        except SegUnifyError as exc:
            if not keep_going:
                raise
            errors[index] = str(exc)
        assemble_s[0] += time.perf_counter() - clock

    clock = time.perf_counter()
    for index in [i for i, left in waiting.items() if not left]:  # every part reused
        finish(index)
    for part, hashes, exc in run_parts(todo, job, facts, client, model, crf, manifest.job, progress, done, total):
        index = part.raster.index
        if exc is not None:
            if not keep_going:
                raise exc
            errors.setdefault(index, str(exc))
            continue
        assert hashes is not None  # a part without an error has its files' hashes
        manifest.record(part.id, hashes)
        computed.append(part.id)
        waiting[index].discard(part.id)
        if not waiting[index] and index not in errors:
            finish(index)
    run_s = time.perf_counter() - clock - assemble_s[0]
    results = [RasterResult(r.input, r.output, r.width, r.height, len(r.window_plan()), r.scale, errors.get(i))
               for i, r in rasters.items()]
    return JobReport(results, len(parts), computed, reused, model.n_classes, facts.device, facts.precision,
                     model, dict(manifest.parts), {"run": run_s, "assemble": assemble_s[0]})


def segment_raster(input_path: str | Path, output_path: str | Path, model: SegUnifyModel | None,
                   options: SegmentOptions, crf: CRF | None = None, fit: SelfFitOptions | None = None,
                   backbone: Backbone | None = None, progress: Progress | None = None, client: Any = None,
                   backbone_weights: str | Path | None = None, model_file: str | Path | None = None) -> SegmentReport:
    """Segment one raster into a class raster on its exact grid; see `segment`. On any error or
    interruption nothing is left at the output (and, without resume, no part files either)."""
    report = segment([input_path], [output_path], model, options, crf, fit, backbone, backbone_weights, client,
                     model_file, progress=progress)
    raster = report.rasters[0]
    return SegmentReport(raster.output, raster.width, raster.height, raster.windows, report.classes, report.device,
                         report.precision, raster.scale, report.model, report.parts, len(report.computed),
                         report.reused)

