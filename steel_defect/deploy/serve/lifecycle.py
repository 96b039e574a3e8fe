"""Stopping the service: SIGTERM (systemd, ``docker stop``, Kubernetes) and SIGINT (Ctrl-C) both stop every
process of it.

LitServe shuts its processes down on KeyboardInterrupt only; Python's default SIGTERM simply ended the main
process and left the inference worker and the uvicorn API process answering on the port as orphans. Here
SIGTERM in the main process raises KeyboardInterrupt (the same graceful path as Ctrl-C: requests in flight
get ``stop_timeout`` seconds), and :func:`stop_children` then ends whatever multiprocessing child is left.
On Linux every child also gets a parent-death signal, so even ``kill -9`` of the main process takes the
children with it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys

_MAIN_PID: int | None = None
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Linux: this process gets ``sig`` when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _after_fork_in_child() -> None:
    set_parent_death_signal()
    if _MAIN_PID is not None and os.getppid() != _MAIN_PID:  # the parent died before prctl took effect
        os._exit(0)


def _on_stop_signal(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked child that kept this handler: leave quietly
        raise SystemExit(0)
    signal.signal(signum, signal.SIG_DFL)  # a second one stops at once
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_stop_handlers() -> None:
    """In the main process, before the server starts: SIGTERM/SIGINT -> KeyboardInterrupt (LitServe's
    graceful shutdown), and every forked child (API processes, the queue manager) dies with its parent."""
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def stop_children(timeout: float = 10.0) -> list[int]:
    """Terminate (then kill) every multiprocessing child still alive; returns their PIDs."""
    children = mp.active_children()
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate()
    for child in children:
        with contextlib.suppress(Exception):
            child.join(timeout)
            if child.is_alive():
                child.kill()
                child.join(5)
    return [c.pid for c in children if c.pid is not None]
