"""The QGIS plugin's child processes (runner: the CLI, installer: venv and pip): output lines as
they come, Cancel that stops the child and what it started. Plain Python: no QGIS needed."""

from __future__ import annotations

import os
import sys
import time

import pytest

from qgis_plugin.child import ERR, OUT, Cancelled, Child
from tests.helpers import wait_gone

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_lines_come_tagged_by_stream_and_the_exit_code_is_kept():
    code = "import sys; print('one'); sys.stderr.write('warn\\n'); print('two'); sys.exit(3)"
    with Child([sys.executable, "-c", code], ENV) as child:
        lines = list(child.lines(lambda: False))
        assert child.close() == 3
    assert [line for tag, line in lines if tag == OUT] == ["one", "two"]
    assert [line for tag, line in lines if tag == ERR] == ["warn"]
    with Child([sys.executable, "-c", code], ENV, merge_stderr=True) as merged:
        assert sorted(line for _, line in merged.lines(lambda: False)) == ["one", "two", "warn"]


def test_cancel_stops_the_child_and_what_it_started(tmp_path):
    """A silent child (no output for a minute) still sees Cancel within the poll interval; with its
    own process group the grandchild it started goes too (pip's build steps)."""
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(60)\n")
    seen: list[str] = []
    idle_calls = []
    with Child([sys.executable, "-c", code], ENV, own_group=True) as child:
        with pytest.raises(Cancelled):
            for _, line in child.lines(lambda: bool(seen) and len(idle_calls) > 2, poll=0.05,
                                       on_idle=lambda: idle_calls.append(1)):
                seen.append(line)
        start = time.monotonic()
        child.stop()
        pid = child.pid
    assert seen == ["started"] and time.monotonic() - start < 5
    assert wait_gone(pid) and wait_gone(int(pidfile.read_text())), "child and grandchild are stopped"


def test_stop_with_grace_lets_the_child_clean_up(tmp_path):
    """The runner gives the CLI SIGTERM first: it removes its partial files before exiting."""
    marker = tmp_path / "cleaned"
    code = ("import signal, sys, time\n"
            f"def bye(*_): open({str(marker)!r}, 'w').write('ok'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    with Child([sys.executable, "-c", code], ENV) as child:
        with pytest.raises(Cancelled):
            for _ in child.lines(lambda: marker.parent.joinpath("go").exists(), poll=0.05):
                marker.parent.joinpath("go").touch()
        child.stop(grace=10.0)
        assert child.close() == 0
    assert marker.read_text() == "ok"
