"""The real CLI, held still inside its progress callback so a test can interrupt it at a known point.

    python -m tests.paused_cli PHASE PERCENT READY_FILE|- SEGUNIFY_ARGS...

Runs `segunify SEGUNIFY_ARGS` (use `--progress json`) unchanged, except that the first progress event of
PHASE at or past PERCENT (and before the phase's end), once READY_FILE exists when one is given, prints
one more JSON line, {"type": "paused", ...}, and then waits there. The test reads lines until it sees
that one and only then signals the child: the signal always lands while the phase is in progress, however
fast its steps are or however loaded the machine is. Nothing in the package knows about this: the wrapper
lives in the test's own child process."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from segunify_cli import options
from segunify_cli.main import main

WAIT_S = 600  # longer than any test's timeout: the test signals the child long before


def _pausing(call, phase: str, percent: int, ready: Path | None):
    paused: list[int] = []

    def progress(self, event_phase: str, done: int, total: int, stats=None) -> None:
        call(self, event_phase, done, total, stats)
        if paused or event_phase != phase or done >= total or 100 * done < percent * max(total, 1):
            return
        if ready is not None and not ready.exists():
            return
        paused.append(done)
        print(json.dumps({"type": "paused", "phase": phase, "done": done, "total": total}), flush=True)
        time.sleep(WAIT_S)  # a signal's handler raises here (KeyboardInterrupt), as at any other point
        sys.exit("paused_cli: the test never interrupted the paused run")

    return progress


if __name__ == "__main__":
    phase, percent, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    options.ProgressDisplay.__call__ = _pausing(  # type: ignore[method-assign]
        options.ProgressDisplay.__call__, phase, percent, None if ready == "-" else Path(ready))
    sys.argv = ["segunify", *sys.argv[4:]]
    main()
