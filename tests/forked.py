"""Run a tool's ``main`` in a forked child of the pytest process.

Frameworks keep process-wide state that outlives a run: Detectron2's loggers bound to the
stream that was ``sys.stdout`` when they were set up (pytest closes its capture streams after
each test), mmengine's global ``Visualizer`` / ``MMLogger`` instances (a second runner in the
same process writes its logs into the first one's folder). A forked child imports nothing
again, gets its own copy of that state, and takes it with it when it exits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def run_forked(fn: Callable[[], int | None], log: Path) -> int:
    """Run ``fn`` in a forked child with stdout / stderr going to ``log``.

    Args:
        fn: the work; its return value (``None`` = 0) or a ``SystemExit`` code is the exit status.
        log: file that receives everything the child prints.

    Returns:
        The child's wait status (use ``os.WIFEXITED`` / ``os.WEXITSTATUS`` / ``os.WTERMSIG``).
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115
            try:
                code = fn() or 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            sys.stdout.flush()
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def exit_code(status: int) -> int:
    """The exit code of a wait status, or minus the signal that killed the child."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
