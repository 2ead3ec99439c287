"""Engines that run a job's parts, the driver's side: in this process, or on a Dask cluster.

Both run the same `run_part`. On Dask, parts are submitted with the futures API (`pure=False`,
one key per part) as `worker.run_part_task`; the worker side (`worker.py`) loads the model once
per process from the model file, so no task carries the model. Dask is imported only when a
cluster is asked for. Public surface: `connect`, `close_client`, `as_client`, `prepare_workers`,
`run_parts`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .. import settings
from ..errors import SegUnifyError
from ..progress import Progress
from .parts import run_part
from .planning import Part
from .spec import JobSpec, RunFacts
from .worker import host_of, import_distributed, run_part_task, torch_threads_plugin

if TYPE_CHECKING:
    from ..method.crf import CRF
    from ..method.model import SegUnifyModel

Result = tuple[Part, dict[str, str] | None, BaseException | None]
log = logging.getLogger("segunify")
WORKER_TIMEOUT_S = 120  # nanny start-up is slow on loaded machines


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
            wait_for_scheduler_file(scheduler_file)
            return distributed.Client(scheduler_file=scheduler_file, timeout=WORKER_TIMEOUT_S)
        return distributed.Client(scheduler, timeout=WORKER_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        where = scheduler_file or scheduler
        raise SegUnifyError(f"Cannot reach the Dask scheduler '{where}' ({exc}); check that it runs and the "
                            "address (--scheduler) or file (--scheduler-file) is right.") from None


def wait_for_scheduler_file(path: str, wait_s: float | None = None) -> None:
    """A scheduler file that is not there yet (the scheduler may still be starting, e.g. in another
    job step): wait for it, saying so, for at most `settings.SCHEDULER_FILE_WAIT_S` seconds, then
    fail. Dask's own client would wait for it forever."""
    limit = settings.SCHEDULER_FILE_WAIT_S if wait_s is None else wait_s
    if os.path.isfile(path):
        return
    log.warning("waiting up to %g s for the Dask scheduler to write its scheduler file '%s'...", limit, path)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if os.path.isfile(path):
            return
    raise SegUnifyError(f"The scheduler file '{path}' did not appear within {limit:g} s; start the scheduler with "
                        f"`dask scheduler --scheduler-file {path}` first, or fix the path (--scheduler-file).")


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


def prepare_workers(client) -> None:
    """Set up every worker of the client's cluster (torch threads, allocator) for our tasks."""
    client.register_plugin(torch_threads_plugin(_workers_per_host(client)))


def _workers_per_host(client) -> dict[str, int]:
    counts: dict[str, int] = {}
    for address in client.scheduler_info().get("workers", {}):
        counts[host_of(address)] = counts.get(host_of(address), 0) + 1
    return counts


class _JobProgress:
    """The "segment" phase over all of a job's windows: parts report their own windows, this adds
    them to those of the parts finished before (`done`: windows already done, e.g. resumed)."""

    def __init__(self, progress: Progress | None, done: int, total: int):
        self.progress, self.done, self.total = progress, done, total

    def part(self, windows_done: int) -> None:
        if self.progress:
            self.progress("segment", self.done + windows_done, self.total)

    def part_finished(self, part: Part) -> None:
        self.done += len(part.tiles())
        self.part(0)


def run_in_process(parts: Sequence[Part], job: JobSpec, facts: RunFacts, model: SegUnifyModel, crf: CRF | None,
                   progress: _JobProgress) -> Iterator[Result]:
    for part in parts:
        try:
            hashes = run_part(part, job, facts, model, crf, lambda phase, done, total, stats=None: progress.part(done))
            progress.done += len(part.tiles())
            yield part, hashes, None
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # reported per part; the caller decides what fails
            yield part, None, exc


def run_on_dask(client, parts: Sequence[Part], job: JobSpec, facts: RunFacts, name: str,
                progress: _JobProgress, retries: int = 2) -> Iterator[Result]:
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
            progress.part_finished(part)
            yield part, result, None
    finally:
        client.cancel(futures)


def run_parts(parts: Sequence[Part], job: JobSpec, facts: RunFacts, client=None, model: SegUnifyModel | None = None,
              crf: CRF | None = None, name: str = "job", progress: Progress | None = None,
              windows_done: int = 0, windows_total: int | None = None) -> Iterator[Result]:
    """Run parts in this process (client None) or on the client's cluster; results as they finish.
    name: the job's fingerprint, which names its Dask tasks.
    Progress: ("segment", windows done, windows in all), counting `windows_done` (of parts done
    before, e.g. resumed) in; `windows_total` defaults to those of `parts` plus `windows_done`."""
    total = windows_total if windows_total is not None else windows_done + sum(len(p.tiles()) for p in parts)
    counter = _JobProgress(progress, windows_done, total)
    if client is None:
        if model is None:
            raise ValueError("running parts in this process needs the model")
        return run_in_process(parts, job, facts, model, crf, counter)
    return run_on_dask(client, parts, job, facts, name, counter)
