"""Stopping cleanly on Ctrl-C or SIGTERM: the first signal is recorded (the Trainer checkpoints and stops, a grid
stops handing out runs), the next one does what it did before (Ctrl-C twice raises KeyboardInterrupt)."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """While active (main thread only), the first SIGINT or SIGTERM is recorded in `signum` instead of stopping the
    process; the next one does what it did before (Ctrl-C twice raises KeyboardInterrupt)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        for s, handler in self._previous.items():
            signal.signal(s, handler)
