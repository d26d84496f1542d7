"""Process helpers of the serving entry points (signals, logging, bind addresses); no TensorFlow.

`medkfp serving-sync` and the TF Serving runner use these without loading TensorFlow, so
this module imports nothing heavier than the standard library.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from medkfp.errors import UserError


class ServeError(UserError, RuntimeError):
    """The server cannot start (e.g. the port is taken); the message says what to change."""


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set `stop` on SIGINT/SIGTERM while inside (main thread only; elsewhere a no-op)."""
    previous = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def configure_logging() -> None:
    """Log INFO to stderr unless the caller set up logging already (for entry points)."""
    # The servers are entry points: make the load/unload log visible.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


def address(host: str, port: int) -> str:
    """'host:port' for a bind or log line; an IPv6 literal gets the brackets it needs."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
