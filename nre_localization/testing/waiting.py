"""Bounded waiting: every wait in a ROS test has a timeout and says what it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


class WaitTimeout(AssertionError):
    """A bounded wait ran out (an AssertionError, so pytest reports it as a test failure)."""


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` every ``interval`` s until it is true; raise WaitTimeout after
    ``timeout`` s. The predicate may raise WaitTimeout itself to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_for_topics(
    node: Any,
    topics: Iterable[str],
    timeout: float,
    *,
    publishers: bool = True,
    executor: Any = None,
) -> None:
    """Wait until every topic in ``topics`` has at least one publisher (``publishers=True``) or
    subscriber (``False``) in ``node``'s graph view. ``node`` is an ``rclpy.node.Node``; if an
    ``executor`` is given it is spun while waiting."""
    wanted = list(topics)
    count = node.count_publishers if publishers else node.count_subscribers
    kind = "publishers" if publishers else "subscribers"

    def ready() -> bool:
        if executor is not None:
            executor.spin_once(timeout_sec=0.02)
        return all(count(topic) > 0 for topic in wanted)

    wait_until(ready, timeout, interval=0.02, what=f"{kind} on {', '.join(wanted)}")
