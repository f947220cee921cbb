"""SIGTERM/SIGINT: finish the optimizer step, save, exit cleanly. A second SIGINT aborts at once."""

from __future__ import annotations

import signal
import threading
from typing import Any, Dict, Optional


class StopRequest:
    """Installs handlers for the duration of a `with` block; `.signal` names the signal once received."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user wants out now
        self.signal = name
        print(f"\nreceived {name}: finishing this step and saving a checkpoint (Ctrl-C again to abort now)", flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
