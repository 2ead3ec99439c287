"""The worker side of a Dask run: the task that runs one part, the model each worker process loads
once, and the worker set-up (torch threads, allocator). The driver (`engines.py`) uses only
`run_part_task`, `torch_threads_plugin`, `host_of` and `import_distributed`; distillation's teacher
shards use `process_model`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import tempfile
from pathlib import Path

import torch

from ..errors import SegUnifyError
from ..files.remote import download, is_object_store
from .parts import run_part
from .planning import Part
from .spec import JobSpec, RunFacts

INSTALL_HINT = 'Running on a Dask cluster needs the distributed extra; install it with pip install "segunify[distributed]".'


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise SegUnifyError(INSTALL_HINT) from None
    return distributed


def worker_model(job: JobSpec, facts: RunFacts):
    """The model and CRF of this job, loaded once per process (a worker runs many parts, and a
    long-lived cluster many jobs with the same model)."""
    if facts.model_file is None:
        raise ValueError("a part run on a worker needs the model file (RunFacts.model_file)")
    return process_model(facts.model_file, facts.model_sha256, facts.backbone_weights, facts.device,
                         facts.precision, facts.fuse, job.crf)


@functools.lru_cache(maxsize=1)  # keyed by what the loaded model depends on (the file's hash included)
def process_model(model_file: str, model_sha256: str | None, backbone_weights: str | None, device_name: str,
                  precision: str, fuse: bool | str, crf: str):
    """A model file's model (on `device_name`, in eval mode) and its CRF, loaded once per worker
    process: by the parts of a job and by distillation's teacher shards."""
    from ..files.model_file import load_model
    from ..method.backbone import choose_precision
    from ..method.crf import make_crf

    device = torch.device(device_name)
    with contextlib.ExitStack() as stack:
        if is_object_store(model_file):  # the job folder is in an object store: fetch the model once
            local = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segunify-model-"))) / "model.safetensors"
            download(model_file, local)
            model_file = str(local)
        model = load_model(model_file, backbone_weights=backbone_weights,
                           precision=choose_precision(precision, device), fuse=fuse)
    # A Dask worker is a daemon process and may not start the CRF's own worker processes.
    return model.to(device).eval(), make_crf(crf, workers=1)


def run_part_task(part: dict, job: str, facts: dict) -> dict[str, str]:
    """The Dask task: one part, from the job spec's JSON and the run facts."""
    spec, run = JobSpec.from_json(job), RunFacts(**facts)
    model, crf = worker_model(spec, run)
    return run_part(Part.from_dict(part), spec, run, model, crf)


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].split("://")[-1]


def set_torch_threads(workers_per_host: dict[str, int], address: str) -> None:
    """Torch threads of a worker: its host's cores shared by that host's workers (Dask's nanny sets
    OMP_NUM_THREADS=1, which would leave torch on one thread)."""
    share = workers_per_host.get(host_of(address)) or workers_per_host.get(socket.gethostname()) or 1
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // share))


def torch_threads_plugin(workers_per_host: dict[str, int]):
    """A Dask WorkerPlugin (made here: Dask is imported only for cluster runs) that sets torch's
    threads on every worker, including workers that join or restart later, and tunes the worker
    process's allocator for the backbone (a worker runs only our tasks)."""
    import_distributed()  # the clear message when the extra is missing
    from distributed import WorkerPlugin

    class TorchThreads(WorkerPlugin):
        name = "segunify-torch-threads"

        def setup(self, worker) -> None:
            from ..method.backbone import reuse_freed_memory

            set_torch_threads(workers_per_host, worker.address)
            reuse_freed_memory()

    return TorchThreads()
