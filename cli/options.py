"""Click options shared by several commands, and the run wrapper that turns errors into one line."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import click

from segunify_core import settings
from segunify_core.errors import SegUnifyError
from segunify_core.files.raster_io import parse_bands

backbone_option = click.option(
    "--backbone", default=settings.BACKBONE, show_default=True,
    help=f"Backbone: {', '.join(settings.BACKBONE_NAMES)} or any timm ViT or Eva name (see `segunify backbones`); "
         "with --backbone-weights, the variant the file holds (it decides the input normalisation).")
backbone_weights_option = click.option(
    "--backbone-weights", type=click.Path(dir_okay=False), default=None,
    help="Local backbone checkpoint (official DINO/DINOv2/DINOv3 .pth or timm .safetensors/.pth) instead of "
         "timm's hub download.")
crf_option = click.option("--crf", type=click.Choice(settings.CRF_BACKENDS), default=settings.CRF, show_default=True,
                          help="Dense CRF refinement; auto prefers pydensecrf, else the torch backend.")
flip_option = click.option("--flip/--no-flip", default=settings.FLIP, show_default=True,
                           help="Average the codes of each window and its horizontal flip.")
device_option = click.option("--device", type=click.Choice(settings.DEVICES), default=settings.DEVICE,
                             show_default=True, help="Where the model runs.")
precision_option = click.option("--precision", type=click.Choice(settings.PRECISIONS), default=settings.PRECISION,
                                show_default=True,
                                help="Backbone precision; auto uses bfloat16 where the hardware runs it natively.")


def bands_value(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """--bands text -> band numbers (None: the raster's default choice)."""
    try:
        return parse_bands(value)
    except SegUnifyError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


bands_option = click.option("--bands", default=None, callback=bands_value,
                            help=settings.help_for(settings.SegmentOptions.__dataclass_fields__["bands"], "train"))
quiet_option = click.option("--quiet", is_flag=True, help="No progress bar or summary.")
resume_option = click.option(
    "--resume/--no-resume", default=settings.RESUME, show_default=True,
    help="Keep the finished parts of an interrupted run (in a hidden folder beside the output) and compute only "
         "the missing ones; without it an interrupted run leaves nothing behind.")
classes_range = click.IntRange(settings.MIN_CLASSES, settings.MAX_CLASSES)

# Remote inputs (segunify_core.files.remote, .stac): a STAC item's asset.
asset_option = click.option("--asset", default=None, metavar="KEY", help=settings.STAC_ASSET_HELP)


# Segmenting: tile-segment and batch offer the settings declared in settings.SegmentOptions (and
# tile-segment those of settings.SelfFitOptions), built here from the declarations.
def _click_type(field: dataclasses.Field, meta: dict[str, Any]) -> Any:
    if meta["choices"]:
        return click.Choice(meta["choices"])
    if meta["kind"] == "path":
        return click.Path(dir_okay=False)
    if meta["kind"] == "folder":
        return click.Path(file_okay=False)
    low, high = meta["minimum"], meta["maximum"]
    if field.type is int or field.type == "int":
        return click.IntRange(low, high) if low is not None or high is not None else int
    if field.type is float or field.type == "float":
        return click.FloatRange(low, high) if low is not None or high is not None else float
    return None


def declared_option(field: dataclasses.Field, command: str, store: Callable[[str, Any], None]) -> Callable:
    """The click option of one declared setting; its parsed value goes to `store(name, value)`."""
    meta = field.metadata["segunify"]
    flag = settings.flag_name(field)
    parse = bands_value if meta["kind"] == "bands" else None

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        store(field.name, parse(ctx, param, value) if parse else value)

    kwargs: dict[str, Any] = {"help": settings.help_for(field, command), "callback": callback, "expose_value": False,
                              "default": None if meta["unset_on_cli"] else field.default}
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    if field.type is bool or field.type == "bool":
        if meta["negatable"]:
            flag = f"{flag}/--no-{flag[2:]}"
            kwargs["show_default"] = True
        else:
            kwargs["is_flag"] = True
    else:
        kwargs["type"] = _click_type(field, meta)
        kwargs["show_default"] = not meta["unset_on_cli"]
    return click.option(flag, **kwargs)


def declared_options(cls: type, command: str, key: str) -> Callable[[Callable], Callable]:
    """One click option per setting of `cls` that `command` offers; the command function receives
    their parsed values as one dict, keyword `key` (settings left to their defaults included)."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            values = click.get_current_context().meta.pop(f"segunify.{key}", {})
            return func(*args, **kwargs, **{key: values})

        def store(name: str, value: Any) -> None:
            click.get_current_context().meta.setdefault(f"segunify.{key}", {})[name] = value

        for field, meta in reversed(settings.declared(cls)):
            if command in meta["commands"]:
                wrapper = declared_option(field, command, store)(wrapper)
        return wrapper

    return decorate


def segment_options(command: str) -> Callable[[Callable], Callable]:
    """tile-segment's and batch's segmentation settings (settings.SegmentOptions) as `segment=`."""
    return declared_options(settings.SegmentOptions, command, "segment")


def self_fit_options(command: str) -> Callable[[Callable], Callable]:
    """tile-segment's self-fit settings (settings.SelfFitOptions) as `fit=`."""
    return declared_options(settings.SelfFitOptions, command, "fit")


def engine_options(func: Callable) -> Callable:
    """Where the work runs: this process (default), a local Dask cluster or a running scheduler."""
    options = (
        click.option("--cluster", default=None, metavar="local[:N]",
                     help="Run on a Dask LocalCluster of N worker processes (pip install \"segunify[distributed]\")."),
        click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                     help="Run on the Dask cluster of this scheduler (workers must see the same files)."),
        click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
                     help="Run on the Dask cluster whose scheduler wrote this file (SLURM, dask-jobqueue)."),
    )
    for option in reversed(options):
        func = option(func)
    return func


@contextlib.contextmanager
def dask_client(cluster: str | None, scheduler: str | None, scheduler_file: str | None, quiet: bool):
    """The Dask client of the engine options (None: in-process), closed at the end."""
    from segunify_core.job.engines import close_client, connect

    client = connect(cluster, scheduler, scheduler_file)
    if client is not None and not quiet:
        workers = len(client.scheduler_info().get("workers", {}))
        click.echo(f"engine: Dask at {client.scheduler.address}, {workers} worker(s)", err=True)
    try:
        yield client
    finally:
        if client is not None:
            close_client(client)


def device_options(func: Callable) -> Callable:
    """Where and how the backbone runs, and quiet: every command that loads a backbone has them."""
    for option in reversed((backbone_weights_option, device_option, precision_option, quiet_option)):
        func = option(func)
    return func


def run_options(func: Callable) -> Callable:
    """The options every command that runs a model shares, in the order --help lists them."""
    return crf_option(flip_option(device_options(func)))


class ProgressDisplay:
    """The core's Progress (segunify_core.progress) shown as tqdm bars (default), JSON lines for the QGIS plugin, or nothing."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bars: dict[str, Any] = {}  # tqdm bars by phase
        self.last: dict[str, int] = {}  # last percentage printed by phase

    def __call__(self, phase: str, done: int, total: int, stats: Mapping[str, float] | None = None) -> None:
        if self.mode == "json":
            pct = int(100 * done / max(total, 1))
            if self.last.get(phase) != pct or done == total:
                self.last[phase] = pct
                print(json.dumps({"type": "progress", "phase": phase, "done": done, "total": total,
                                  "percent": pct}), flush=True)
        elif self.mode == "bar":
            from tqdm import tqdm

            bar = self.bars.get(phase)
            if bar is None:
                bar = self.bars[phase] = tqdm(total=total, desc=phase, unit="win" if phase != "train" else "step",
                                              dynamic_ncols=True, file=sys.stderr)
            bar.update(done - bar.n)
            if stats:
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}", refresh=False)
            if done >= total:
                bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def progress_for(ctx: click.Context, quiet: bool) -> ProgressDisplay:
    mode = ctx.obj.get("progress", "bar") if ctx.obj else "bar"
    return ProgressDisplay("none" if quiet and mode == "bar" else mode)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


GPU_OUT_OF_MEMORY = ("The GPU ran out of memory; lower the batch size (--batch-size, e.g. half of it) or the window "
                     "(--window), close other programs using the GPU, or run on the CPU (--device cpu).")


def gpu_out_of_memory(exc: BaseException) -> bool:
    """Whether exc is PyTorch's CUDA out-of-memory error (its own class, or a RuntimeError saying so
    from older releases and other code paths). torch is looked up, not imported: if it was never
    imported, the error cannot be its."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def guarded(func: Callable) -> Callable:
    """Run a command: user errors as one line and exit 1, Ctrl-C/SIGTERM as exit 130, tracebacks only
    with --debug. Cleanup of partial output happens in the core's own finally blocks."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.obj and ctx.obj.get("debug"))
        json_mode = bool(ctx.obj and ctx.obj.get("progress") == "json")
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # restored when the command returns

        def fail(message: str, code: int) -> None:
            if json_mode:
                print(json.dumps({"type": "error", "message": message}), flush=True)
            click.echo(f"Error: {message}", err=True)
            sys.exit(code)

        try:
            return func(*args, **kwargs)
        except SegUnifyError as exc:
            if debug:
                traceback.print_exc()
            fail(str(exc), 1)
        except KeyboardInterrupt:
            fail("Interrupted; no output was written.", 130)
        except MemoryError:
            fail("Out of memory; lower the batch size (--batch-size) or window (--window), or close other programs.", 1)
        except OSError as exc:
            if debug:
                traceback.print_exc()
            if exc.errno in (27, 28, 122):  # EFBIG, ENOSPC, EDQUOT
                fail(f"Writing failed ({exc.strerror}): the disk is full or a quota/file-size limit was reached; "
                     "free space or write to another disk.", 1)
            fail(f"{exc.strerror or exc} ({exc.filename or 'file'}); check the path and permissions.", 1)
        except Exception as exc:  # unexpected: still one line unless --debug
            if debug:
                traceback.print_exc()
            if gpu_out_of_memory(exc):
                fail(GPU_OUT_OF_MEMORY, 1)
            fail(f"Unexpected {type(exc).__name__}: {exc}; rerun with --debug for the traceback.", 1)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
