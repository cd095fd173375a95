"""Counters and latency statistics for ``/diagnostics`` (thread-safe, no rclpy).

The node's callbacks and worker update one :class:`NodeStats`; a timer turns :meth:`snapshot`
into a ``diagnostic_msgs/DiagnosticStatus`` (see :func:`fill_status`).
Latencies are seconds internally and milliseconds in the report.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels (as bytes there)


class NodeStats:
    """What the node reports: frames, drops, rejections per kind, latency, last solve figures."""

    def __init__(self, window: int = 300) -> None:
        self._lock = threading.Lock()
        self.latency: deque[float] = deque(maxlen=window)  # s, image receipt -> pose published
        self.stage_times: dict[str, deque[float]] = {}
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.poses_published = 0
        self.odom_missing = 0
        self.last_frame_stamp = 0  # ns: stamp of the last frame the worker finished with
        self.rejected: Counter[str] = Counter()
        self.state = "global"
        self.points_used = 0
        self.n_points = 0
        self.cost = float("nan")
        self.last_error = ""
        self.last_image_time = 0.0  # monotonic
        self._window = window

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def reject(self, kind: str, message: str) -> None:
        with self._lock:
            self.rejected[kind] += 1
            self.last_error = f"{kind}: {message}"

    def frame_done(
        self,
        state: str,
        latency_s: float | None,
        timings: dict[str, float],
        points_used: int,
        n_points: int,
        cost: float,
    ) -> None:
        with self._lock:
            self.processed += 1
            self.state = state
            if latency_s is not None:
                self.latency.append(latency_s)
            for k, v in timings.items():
                self.stage_times.setdefault(k, deque(maxlen=self._window)).append(v)
            self.points_used, self.n_points, self.cost = points_used, n_points, cost

    def snapshot(self) -> dict[str, object]:
        """A consistent copy: counters, ``latency_p50_ms`` / ``p90`` / ``p99``, per-stage p50."""
        with self._lock:
            lat = np.array(self.latency) * 1e3
            out: dict[str, object] = {
                "state": self.state,
                "frames_received": self.received,
                "frames_processed": self.processed,
                "frames_dropped": self.dropped,
                "poses_published": self.poses_published,
                "odom_missing": self.odom_missing,
                "last_frame_stamp": f"{self.last_frame_stamp * 1e-9:.9f}",
                "points_used": self.points_used,
                "map_points_considered": self.n_points,
                "cost": self.cost,
                "last_error": self.last_error,
            }
            for q in (50, 90, 99):
                out[f"latency_p{q}_ms"] = float(np.percentile(lat, q)) if lat.size else float("nan")
            for k, v in sorted(self.stage_times.items()):
                out[f"stage_{k}_p50_ms"] = (
                    float(np.median(np.array(v) * 1e3)) if v else float("nan")
                )
            out["rejected_total"] = sum(self.rejected.values())
            for kind, n in sorted(self.rejected.items()):
                out[f"rejected.{kind}"] = n
            out["seconds_since_image"] = (
                time.monotonic() - self.last_image_time if self.last_image_time else float("inf")
            )
        return out


def level_and_message(snap: dict[str, object], active: bool) -> tuple[int, str]:
    """Diagnostic level and one-line summary from a :meth:`NodeStats.snapshot`."""
    if not active:
        return WARN, "inactive (lifecycle)"
    state = str(snap["state"])
    since = float(snap["seconds_since_image"])  # type: ignore[arg-type]
    if since > 5.0:
        return WARN, f"{state}; no image for {since:.0f} s" if np.isfinite(
            since
        ) else "no image yet"
    if state == "tracking":
        return OK, "tracking"
    if state == "lost":
        return ERROR, "lost: relocalising globally"
    return WARN, f"{state}: searching for a pose"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if np.isfinite(v) else str(v)
    return str(v)


def fill_status(status: object, name: str, hardware_id: str, snap: dict, active: bool) -> object:
    """Fill a ``diagnostic_msgs/DiagnosticStatus`` in place (``values`` need ``KeyValue``)."""
    from diagnostic_msgs.msg import KeyValue

    level, message = level_and_message(snap, active)
    status.level = bytes([level])  # type: ignore[attr-defined]
    status.name = name  # type: ignore[attr-defined]
    status.hardware_id = hardware_id  # type: ignore[attr-defined]
    status.message = message  # type: ignore[attr-defined]
    status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in snap.items()]  # type: ignore[attr-defined]
    return status
