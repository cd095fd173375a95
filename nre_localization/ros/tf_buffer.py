"""A minimal TF buffer: a tree of timestamped transforms with interpolation (no rclpy).

Used by the node when ``tf2_ros`` is not importable (PyPI ROS wheels), and by offline bag replay.
It follows tf2's semantics where they matter here:

- each frame has one parent; ``/tf_static`` edges hold for all time, ``/tf`` edges are cached for
  ``cache_s`` seconds of message time;
- :meth:`TransformBuffer.lookup` chains edges through the common ancestor, interpolating each
  dynamic edge at the requested stamp (linear translation, quaternion slerp); a stamp outside an
  edge's cached interval fails (no extrapolation) unless it lies within ``tolerance_ns`` of an end;
- stamp 0 means "latest common time" (tf2's ``Time()``);
- :meth:`clear` forgets dynamic edges (call it when time jumps back, as when a bag loops).

Transforms are ``T_parent_child`` ``[4, 4]`` float64 arrays; stamps are integer nanoseconds.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

import numpy as np

from nre_localization.ros.conversions import (
    invert_T,
    make_T,
    matrix_to_quat_xyzw,
    quat_xyzw_to_matrix,
    stamp_to_ns,
    transform_msg_to_matrix,
)


class TransformUnavailable(LookupError):
    """The requested transform is not (yet) known at that stamp; the message says why."""


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)  # sorted ns
    trans: list[np.ndarray] = field(default_factory=list)  # [3]
    quats: list[np.ndarray] = field(default_factory=list)  # [4] xyzw


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (xyzw), shortest arc."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    s = np.sin(theta)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / s


class TransformBuffer:
    """Thread-safe store of ``T_parent_child`` edges with time interpolation."""

    def __init__(self, cache_s: float = 10.0) -> None:
        self.cache_ns = int(cache_s * 1e9)
        self._edges: dict[str, _Edge] = {}  # child -> edge
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- insertion
    def set_transform(
        self, parent: str, child: str, stamp_ns: int, t_parent_child: np.ndarray, static: bool
    ) -> None:
        """Insert one edge sample. Re-parenting a frame replaces its history (as tf2 warns)."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"bad transform edge '{parent}' -> '{child}'")
        t = np.asarray(t_parent_child, dtype=np.float64)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"transform '{parent}' -> '{child}' has non-finite values")
        q = matrix_to_quat_xyzw(t[:3, :3])
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = _Edge(parent, static)
                self._edges[child] = edge
            if static:
                edge.stamps, edge.trans, edge.quats = [0], [t[:3, 3].copy()], [q]
                return
            i = bisect.bisect_left(edge.stamps, stamp_ns)
            if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
                edge.trans[i], edge.quats[i] = t[:3, 3].copy(), q
            else:
                edge.stamps.insert(i, stamp_ns)
                edge.trans.insert(i, t[:3, 3].copy())
                edge.quats.insert(i, q)
            # Drop samples older than the cache window behind the newest one.
            cut = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_ns)
            if cut > 0:
                del edge.stamps[:cut], edge.trans[:cut], edge.quats[:cut]

    def add_tf_message(self, msg: object, static: bool) -> int:
        """Insert every ``TransformStamped`` of a ``tf2_msgs/TFMessage``; returns how many were
        rejected (malformed) — the rest are kept."""
        bad = 0
        for ts in msg.transforms:  # type: ignore[attr-defined]
            try:
                self.set_transform(
                    ts.header.frame_id,
                    ts.child_frame_id,
                    stamp_to_ns(ts.header.stamp),
                    transform_msg_to_matrix(ts.transform),
                    static,
                )
            except Exception:
                bad += 1
        return bad

    def clear(self) -> None:
        """Forget all dynamic edges (keep static ones)."""
        with self._lock:
            self._edges = {c: e for c, e in self._edges.items() if e.static}

    def frames(self) -> list[str]:
        with self._lock:
            names = set(self._edges) | {e.parent for e in self._edges.values()}
        return sorted(names)

    # ---------------------------------------------------------------- lookup
    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges and len(chain) < 1000:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _edge_at(self, child: str, stamp_ns: int, tol_ns: int) -> np.ndarray:
        edge = self._edges[child]
        if edge.static:
            return make_T(quat_xyzw_to_matrix(edge.quats[0]), edge.trans[0])
        st = edge.stamps
        if stamp_ns == 0:
            return make_T(quat_xyzw_to_matrix(edge.quats[-1]), edge.trans[-1])
        if stamp_ns <= st[0]:
            if st[0] - stamp_ns <= tol_ns:
                return make_T(quat_xyzw_to_matrix(edge.quats[0]), edge.trans[0])
            raise TransformUnavailable(
                f"'{edge.parent}' -> '{child}' at {stamp_ns * 1e-9:.3f}s: would extrapolate into "
                f"the past (oldest {st[0] * 1e-9:.3f}s)"
            )
        if stamp_ns >= st[-1]:
            if stamp_ns - st[-1] <= tol_ns:
                return make_T(quat_xyzw_to_matrix(edge.quats[-1]), edge.trans[-1])
            raise TransformUnavailable(
                f"'{edge.parent}' -> '{child}' at {stamp_ns * 1e-9:.3f}s: would extrapolate into "
                f"the future (newest {st[-1] * 1e-9:.3f}s)"
            )
        i = bisect.bisect_right(st, stamp_ns)
        t0, t1 = st[i - 1], st[i]
        a = (stamp_ns - t0) / (t1 - t0)
        trans = (1 - a) * edge.trans[i - 1] + a * edge.trans[i]
        q = _slerp(edge.quats[i - 1], edge.quats[i], a)
        return make_T(quat_xyzw_to_matrix(q), trans)

    def _latest_common(self, frames: list[str]) -> int:
        newest = [self._edges[f].stamps[-1] for f in frames if not self._edges[f].static]
        return min(newest) if newest else 0

    def lookup(self, target: str, source: str, stamp_ns: int, tolerance_ns: int = 0) -> np.ndarray:
        """``T_target_source [4, 4]`` at ``stamp_ns`` (0 = latest common time).

        Raises :class:`TransformUnavailable` when the frames are unconnected or a dynamic edge
        would have to be extrapolated by more than ``tolerance_ns``.
        """
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        with self._lock:
            up_s, up_t = self._chain(source), self._chain(target)
            common = next((f for f in up_s if f in set(up_t)), None)
            if common is None:
                known = set(self._edges) | {e.parent for e in self._edges.values()}
                raise TransformUnavailable(
                    f"no TF path between '{target}' and '{source}' (known frames: "
                    f"{', '.join(sorted(known)) or 'none'})"
                )
            s_edges = up_s[: up_s.index(common)]
            t_edges = up_t[: up_t.index(common)]
            if stamp_ns == 0:
                stamp_ns = self._latest_common(s_edges + t_edges)
            t_common_source = np.eye(4)
            for child in reversed(s_edges):  # from the common ancestor down to source
                t_common_source = t_common_source @ self._edge_at(child, stamp_ns, tolerance_ns)
            t_common_target = np.eye(4)
            for child in reversed(t_edges):
                t_common_target = t_common_target @ self._edge_at(child, stamp_ns, tolerance_ns)
        return invert_T(t_common_target) @ t_common_source

    def can_transform(self, target: str, source: str, stamp_ns: int, tolerance_ns: int = 0) -> bool:
        try:
            self.lookup(target, source, stamp_ns, tolerance_ns)
        except TransformUnavailable:
            return False
        return True
