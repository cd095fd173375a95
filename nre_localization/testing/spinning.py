"""A node spun in a background thread, for test and benchmark clients that wait on callbacks."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["BackgroundSpin"]


class BackgroundSpin:
    """Spin ``node`` on its own ``SingleThreadedExecutor`` in a daemon thread (``spin_once`` with
    ``period`` s timeouts) from construction until :meth:`stop` (or the end of a ``with`` block);
    the node's callbacks run on that thread."""

    def __init__(self, node: Any, period: float = 0.01) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._spin, args=(period,), daemon=True)
        self._thread.start()

    def _spin(self, period: float) -> None:
        while not self._done.is_set():
            self.executor.spin_once(timeout_sec=period)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop spinning and join the thread (at most ``timeout`` s)."""
        self._done.set()
        self._thread.join(timeout=timeout)

    def __enter__(self) -> BackgroundSpin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
