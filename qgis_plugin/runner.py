"""Runs the `segunify` CLI of a separate Python environment as a child process.

QGIS's own Python keeps numpy 1.x, so torch and SegUnify never load inside QGIS. The child
streams JSON lines (progress, error) on stdout and log lines on stderr; Cancel terminates it,
and the CLI removes its partial output on SIGTERM. Arguments are passed as a list, never
through a shell, so paths with spaces, quotes and non-ASCII letters are safe.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

from .child import ERR, Cancelled, Child

SETTING_PYTHON = "SEGUNIFY_PYTHON"
ENV_PYTHON = "SEGUNIFY_PYTHON"
# Temporary names of unfinished files and folders: `.<stem>.<random>.partial<suffix>`, the pattern of
# segunify_core.files.atomic (which QGIS's Python cannot import: it must never load torch).
PARTIAL_MARK = ".partial"
# Variables QGIS sets for its own Python/GDAL/PROJ that would break a different environment.
UNSAFE_ENV = ("PYTHONPATH", "PYTHONHOME", "QGIS_PREFIX_PATH", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB",
              "PROJ_DATA", "PYTHONSTARTUP", "QGIS_CUSTOM_CONFIG_PATH", "QGIS_PLUGINPATH")
FIX_HINT = ("Run Processing Toolbox > SegUnify > Install environment (or Plugins > SegUnify > Install "
            "environment); it creates SegUnify's own Python environment and sets it here. To use an environment "
            "of your own, set its Python in Processing > Options > Providers > SegUnify > Python executable, or "
            "the SEGUNIFY_PYTHON environment variable.")
UPGRADE_HINT = ("run Install environment with Mode 'Upgrade SegUnify' (Processing Toolbox > SegUnify > Install "
                "environment, MODE=1)")


class EnvironmentMissing(Exception):
    """No usable SegUnify environment; the message says how to fix it."""


class ChildFailed(Exception):
    """The child exited with an error; the message is its one-line explanation."""


def configured_python() -> str:
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        value = ProcessingConfig.getSetting(SETTING_PYTHON)
    except Exception:
        value = None
    return str(value or "").strip()


def child_environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in UNSAFE_ENV}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    return env


def plugin_version() -> str:
    """This plugin's version (metadata.txt beside the package, or at the repository's top when run
    from a checkout); the environment must hold exactly this SegUnify version."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "metadata.txt"), os.path.join(os.path.dirname(here), "metadata.txt")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("version="):
                        return line.split("=", 1)[1].strip()
    raise EnvironmentMissing("The plugin's metadata.txt is missing; reinstall the SegUnify plugin.")


def installed_version(python: str) -> str | None:
    """The SegUnify version installed in `python`'s environment (from its package metadata, without
    importing SegUnify: a few tens of milliseconds), or None."""
    code = "import importlib.metadata as m\ntry: print(m.version('segunify'))\nexcept m.PackageNotFoundError: pass"
    try:
        # -I: neither the current folder (a checkout holds segunify.egg-info) nor PYTHON* variables count.
        out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60,
                             env=child_environment())
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def check_version(python: str, source: str) -> None:
    """Refuse an environment whose SegUnify is not this plugin's version."""
    have, want = installed_version(python), plugin_version()
    if have is None:
        raise EnvironmentMissing(f"The Python set in the {source} ('{python}') has no SegUnify installed. {FIX_HINT}")
    if have != want:
        raise EnvironmentMissing(f"The SegUnify environment ({python}) has SegUnify {have} but this plugin is "
                                 f"{want}; {UPGRADE_HINT}.")


def find_command() -> tuple[list[str], str]:
    """The argv prefix that runs `segunify`, and where it came from: the provider setting, the
    SEGUNIFY_PYTHON environment variable, or `segunify` on PATH, in that order. A Python must hold
    this plugin's SegUnify version."""
    for source, python in (("provider setting", configured_python()),
                           ("SEGUNIFY_PYTHON", os.environ.get(ENV_PYTHON, "").strip())):
        if python:
            if not (os.path.isfile(python) and os.access(python, os.X_OK)):
                raise EnvironmentMissing(f"The Python set in the {source} ('{python}') does not exist or is not "
                                         f"executable. {FIX_HINT}")
            check_version(python, source)
            return [python, "-m", "segunify_cli"], f"{python} ({source})"
    exe = shutil.which("segunify")
    if exe:
        return [exe], f"{exe} (PATH)"
    raise EnvironmentMissing(f"No SegUnify environment found. {FIX_HINT}")


def probe() -> dict:
    """Ask the environment to describe itself (`segunify check --json`)."""
    command, origin = find_command()
    proc = subprocess.run(command + ["check", "--json"], capture_output=True, text=True, env=child_environment(),
                          timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentMissing(f"{origin} cannot run SegUnify ({last}). {FIX_HINT}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["origin"] = origin
    return report


def partial_glob(target: str | os.PathLike) -> str:
    """Glob pattern of the temporary names an unfinished write of `target` can leave."""
    folder, name = os.path.split(os.fspath(target))
    stem = os.path.splitext(name)[0]
    return os.path.join(glob.escape(folder or "."), f".{glob.escape(stem)}.*{PARTIAL_MARK}*")


def remove_partials(paths: list[str]) -> None:
    """Remove temporary files the CLI could not clean up (only after a hard kill)."""
    for path in paths:
        for tmp in glob.glob(partial_glob(path)):
            try:
                os.remove(tmp)
            except OSError:
                pass


def run_cli(args: list[str], feedback, phases: dict[str, tuple[float, float]] | None = None,
            outputs: list[str] | None = None) -> list[dict]:
    """Run `segunify --progress json ARGS`, driving feedback; return the JSON events seen.

    phases maps a CLI progress phase to the share (start, end) of the algorithm's progress bar.
    On cancel the child gets SIGTERM (it cleans up its temporary files), then SIGKILL after 10 s;
    nothing is left at the outputs either way.
    """
    command, origin = find_command()
    argv = command + ["--progress", "json"] + [str(a) for a in args]
    feedback.pushCommandInfo(" ".join(argv))
    events, error, phases = [], None, phases or {}
    with Child(argv, child_environment()) as child:
        feedback.pushInfo(f"SegUnify runs as process {child.pid}.")  # whom to look for if QGIS is killed
        try:
            for tag, line in child.lines(feedback.isCanceled):
                if tag == ERR:
                    if line.strip() and not line.startswith("Error: "):  # the error comes as a JSON event
                        feedback.pushConsoleInfo(line)
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    feedback.pushConsoleInfo(line)
                    continue
                events.append(event)
                if event.get("type") == "progress":
                    start, end = phases.get(event.get("phase"), (0.0, 100.0))
                    feedback.setProgressText(event.get("phase", ""))
                    feedback.setProgress(start + (end - start) * event.get("percent", 0) / 100.0)
                elif event.get("type") == "error":
                    error = event.get("message")
        except Cancelled:
            child.stop(grace=10.0)
            child.close()
            remove_partials(outputs or [])
            raise
        code = child.close()
    if code == -9 or code == 137:
        raise ChildFailed("The SegUnify process was killed (exit -9), most likely out of memory; lower the batch "
                          "size or the window size, or close other programs.")
    if code != 0:
        raise ChildFailed(error or f"SegUnify exited with code {code} ({origin}); see the log above.")
    return events
