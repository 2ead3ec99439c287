"""Engines that run a job's parts: in this process, or on a Dask cluster.

Both run the same `run_part`. On Dask, parts are submitted with the futures API (`pure=False`,
one key per part) and every worker process loads the model once from the model file (a
per-process cache keyed by the file's SHA-256), so no task carries the model. Dask is imported
only when a cluster is asked for.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .errors import SegUnifyError
from .parts import Progress, run_part
from .planning import Part
from .spec import JobSpec, RunFacts

if TYPE_CHECKING:
    from .crf import CRF
    from .model import SegUnifyModel

Result = tuple[Part, dict[str, str] | None, BaseException | None]
INSTALL_HINT = 'Running on a Dask cluster needs the distributed extra; install it with pip install "segunify[distributed]".'
WORKER_TIMEOUT_S = 120  # nanny start-up is slow on loaded machines


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise SegUnifyError(INSTALL_HINT) from None
    return distributed


def parse_cluster(text: str) -> int:
    """`local` or `local:N` -> N worker processes (default: one per two cores)."""
    name, _, count = text.partition(":")
    if name != "local" or (count and not count.isdigit()) or count == "0":
        raise SegUnifyError(f"Cluster '{text}' is not understood; write local or local:N (N worker processes) "
                            "(local cluster, --cluster), or give a running scheduler's address (--scheduler) or file (--scheduler-file).")
    return int(count) if count else max(1, (os.cpu_count() or 2) // 2)


def connect(cluster: str | None = None, scheduler: str | None = None, scheduler_file: str | None = None):
    """A Dask client for --cluster local[:N], --scheduler ADDRESS or --scheduler-file FILE; None for
    in-process. The caller closes it (and the LocalCluster it may own)."""
    if not (cluster or scheduler or scheduler_file):
        return None
    if sum(bool(x) for x in (cluster, scheduler, scheduler_file)) > 1:
        raise SegUnifyError("Give one of a local cluster (--cluster), a scheduler address (--scheduler) or a "
                            "scheduler file (--scheduler-file), not several.")
    distributed = import_distributed()
    if cluster:
        workers = parse_cluster(cluster)
        local = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, death_timeout=WORKER_TIMEOUT_S,
                                         silence_logs=logging.ERROR)
        return distributed.Client(local, timeout=WORKER_TIMEOUT_S)  # close_client closes the LocalCluster too
    try:
        if scheduler_file:
            return distributed.Client(scheduler_file=scheduler_file, timeout=WORKER_TIMEOUT_S)
        return distributed.Client(scheduler, timeout=WORKER_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        where = scheduler_file or scheduler
        raise SegUnifyError(f"Cannot reach the Dask scheduler '{where}' ({exc}); check that it runs and the "
                            "address (--scheduler) or file (--scheduler-file) is right.") from None


def close_client(client) -> None:
    """Close a client from `connect`, and the LocalCluster it was started on (`client.cluster`;
    None for a client of a running scheduler)."""
    local = client.cluster
    client.close()
    if local is not None:
        local.close()


def as_client(client: Any):
    """A `distributed.Client` from a client or a scheduler address; None stays None."""
    if client is None or not isinstance(client, str):
        return client
    return import_distributed().Client(client, timeout=WORKER_TIMEOUT_S)


# --- worker side -------------------------------------------------------------------------------

def worker_model(job: JobSpec, facts: RunFacts):
    """The model and CRF of this job, loaded once per process (a worker runs many parts)."""
    if facts.model_file is None:
        raise ValueError("a part run on a worker needs the model file (RunFacts.model_file)")
    return _load_worker_model(job.to_json(), facts)


@functools.lru_cache(maxsize=1)  # one job's model per worker process, keyed by the whole spec and run facts
def _load_worker_model(job_json: str, facts: RunFacts):
    from .backbone import choose_precision
    from .crf import make_crf
    from .model import load_model

    job = JobSpec.from_json(job_json)
    device = torch.device(facts.device)
    assert facts.model_file is not None  # checked by worker_model
    model = load_model(facts.model_file, backbone_weights=facts.backbone_weights,
                       precision=choose_precision(facts.precision, device), fuse=facts.fuse)
    # A Dask worker is a daemon process and may not start the CRF's own worker processes.
    return model.to(device).eval(), make_crf(job.crf, workers=1)


def run_part_task(part: dict, job: str, facts: dict) -> dict[str, str]:
    """The Dask task: one part, from the job spec's JSON and the run facts."""
    spec, run = JobSpec.from_json(job), RunFacts(**facts)
    model, crf = worker_model(spec, run)
    return run_part(Part.from_dict(part), spec, run, model, crf)


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0].split("://")[-1]


def set_torch_threads(workers_per_host: dict[str, int], address: str) -> None:
    """Torch threads of a worker: its host's cores shared by that host's workers (Dask's nanny sets
    OMP_NUM_THREADS=1, which would leave torch on one thread)."""
    share = workers_per_host.get(_host(address)) or workers_per_host.get(socket.gethostname()) or 1
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
            from .backbone import reuse_freed_memory

            set_torch_threads(workers_per_host, worker.address)
            reuse_freed_memory()

    return TorchThreads()


def prepare_workers(client) -> None:
    """Set up every worker of the client's cluster (torch threads, allocator) for our tasks."""
    client.register_plugin(torch_threads_plugin(_workers_per_host(client)))


def _workers_per_host(client) -> dict[str, int]:
    counts: dict[str, int] = {}
    for address in client.scheduler_info().get("workers", {}):
        counts[_host(address)] = counts.get(_host(address), 0) + 1
    return counts


# --- driver side -------------------------------------------------------------------------------

def run_in_process(parts: Sequence[Part], job: JobSpec, facts: RunFacts, model: SegUnifyModel, crf: CRF | None,
                   progress: Progress | None = None) -> Iterator[Result]:
    for part in parts:
        try:
            yield part, run_part(part, job, facts, model, crf, progress), None
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # reported per part; the caller decides what fails
            yield part, None, exc


def run_on_dask(client, parts: Sequence[Part], job: JobSpec, facts: RunFacts, name: str,
                progress: Progress | None = None, retries: int = 2) -> Iterator[Result]:
    distributed = import_distributed()
    if facts.model_file is None:
        raise ValueError("a cluster run needs the model as a file")
    prepare_workers(client)
    resources = {"GPU": 1} if facts.device == "cuda" else None
    by_key = {f"segunify-{name[:12]}-{p.id}": p for p in parts}
    futures = client.map(run_part_task, [p.to_dict() for p in parts], job=job.to_json(), facts=facts.to_dict(),
                         key=list(by_key),
                         pure=False, retries=retries, resources=resources)
    try:
        for future in distributed.as_completed(futures):
            part = by_key[future.key]
            try:
                result = future.result()
            except (KeyboardInterrupt, SystemExit):
                raise
            except distributed.KilledWorker as exc:
                yield part, None, SegUnifyError(f"Part {part.id} of '{part.raster.input}' killed its worker several "
                                                f"times ({exc}); lower the batch size (--batch-size) or give workers "
                                                "more memory.")
                continue
            except Exception as exc:
                yield part, None, exc
                continue
            if progress:
                progress(len(part.tiles()))
            yield part, result, None
    finally:
        client.cancel(futures)


def run_parts(parts: Sequence[Part], job: JobSpec, facts: RunFacts, client=None, model: SegUnifyModel | None = None,
              crf: CRF | None = None, name: str = "job",
              progress: Progress | None = None) -> Iterator[Result]:
    """Run parts in this process (client None) or on the client's cluster; results as they finish.
    name: the job's fingerprint, which names its Dask tasks."""
    if client is None:
        if model is None:
            raise ValueError("running parts in this process needs the model")
        return run_in_process(parts, job, facts, model, crf, progress)
    return run_on_dask(client, parts, job, facts, name, progress)


ProgressFactory = Callable[[int], Progress]
