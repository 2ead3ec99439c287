"""A child process whose output reaches QGIS line by line while Cancel stays live.

The runner (the `segunify` CLI) and the installer (venv, pip) both run children through this. The
pipes are read on threads into one queue because a blocking readline would freeze Cancel while a
child is silent, and select() does not work on Windows pipes. Arguments are a list, never a shell.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

OUT, ERR = "out", "err"


class Cancelled(Exception):
    """The user pressed Cancel; the child has been stopped."""


class Child:
    """`argv` running with pipes read on threads. With `merge_stderr`, stderr lines come as OUT;
    with `own_group` (not on Windows) the child leads a process group, so stop() ends whatever it
    started too (pip's build steps)."""

    def __init__(self, argv: list[str], env: dict, *, merge_stderr: bool = False, own_group: bool = False):
        self.own_group = own_group and sys.platform != "win32"
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                     env=env, start_new_session=self.own_group, bufsize=1)
        self._queue: queue.Queue = queue.Queue()
        self._streams = [(self.proc.stdout, OUT)] + ([] if merge_stderr else [(self.proc.stderr, ERR)])
        for stream, tag in self._streams:
            threading.Thread(target=self._pump, args=(stream, tag), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, stream, tag: str) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put((tag, line.rstrip("\n")))
        self._queue.put((tag, None))

    def lines(self, is_canceled: Callable[[], bool], poll: float = 0.1,
              on_idle: Callable[[], None] | None = None) -> Iterator[tuple[str, str]]:
        """(OUT or ERR, line) until both pipes close; raises Cancelled (the child still running:
        call stop) once is_canceled() is true; on_idle runs every `poll` s without output."""
        open_streams = len(self._streams)
        while open_streams:
            if is_canceled():
                raise Cancelled
            try:
                tag, line = self._queue.get(timeout=poll)
            except queue.Empty:
                if on_idle:
                    on_idle()
                continue
            if line is None:
                open_streams -= 1
            else:
                yield tag, line

    def _signal(self, sig: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.proc.pid, sig)
            elif sig == signal.SIGTERM:
                self.proc.terminate()
            else:
                self.proc.kill()
        except OSError:  # already gone
            pass

    def stop(self, grace: float = 0.0) -> None:
        """End the child: SIGTERM first when grace > 0 (the CLI removes its temporary files on it),
        SIGKILL if it still runs after `grace` seconds."""
        if self.proc.poll() is not None:
            return
        if grace > 0:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                pass
        self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))

    def close(self) -> int:
        """Wait for the child, close its pipes and return its exit code."""
        code = self.proc.wait()
        for stream, _ in self._streams:
            stream.close()
        return code

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()  # a no-op once it has exited; an error on our side must not leave it running
        self.close()
