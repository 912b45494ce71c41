"""The stop signal of a long-running process: an event set by SIGINT or SIGTERM.

Shared by the processes that serve until told to stop (the worker, the fake backends, the mDNS announcer).
Where the loop cannot take signal handlers (not the main thread, or a platform without them) the event is
only set by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["stop_on_signals"]


def stop_on_signals() -> asyncio.Event:
    """An event the running loop sets on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop
