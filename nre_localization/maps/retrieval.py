"""Global relocalisation support: keyframe retrieval, candidate points, covisibility clustering.

Global descriptor: SPoC with power normalisation over the coarse descriptor map — the mean of the
unit-normalised local descriptors, signed square root, L2 normalisation (``[G] = [Dc]``). It needs
no extra network head, and the signed square root damps bursty repeated structure.

Retrieval ranks keyframes by cosine similarity; the candidate points of a keyframe set are the
points observed in it. When the top-k keyframes look at different places (no shared points), they
are split into covisibility clusters (connected components of "share at least ``min_shared``
points"), ordered by their best retrieval rank, so the localiser tries one place at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from nre_localization.datasets.common import CameraSpec
    from nre_localization.maps.format import NreMap


def global_descriptor(coarse: torch.Tensor) -> np.ndarray:
    """``coarse [Dc, Hc, Wc]`` descriptor map -> unit global descriptor ``[Dc]`` float32."""
    d = torch.nn.functional.normalize(coarse.float().flatten(1), dim=0).mean(dim=1)
    d = torch.sign(d) * torch.sqrt(d.abs())
    d = torch.nn.functional.normalize(d, dim=0)
    return d.cpu().numpy().astype(np.float32)


def retrieve(global_desc: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` keyframes by cosine: (indices ``[k]``, scores ``[k]``), best first."""
    s = np.asarray(global_desc, dtype=np.float32) @ np.asarray(query, dtype=np.float32)
    k = min(k, len(s))
    idx = np.argsort(-s, kind="stable")[:k]
    return idx, s[idx]


def covisibility(m: NreMap, keyframes: np.ndarray) -> np.ndarray:
    """``[k, k]`` number of points shared by each pair of ``keyframes``."""
    kf = np.asarray(keyframes)
    pt = m.points.point_of_observation()
    sets = [set(pt[m.points.image_index == k].tolist()) for k in kf]
    out = np.zeros((len(kf), len(kf)), dtype=np.int64)
    for a in range(len(kf)):
        for b in range(a, len(kf)):
            out[a, b] = out[b, a] = len(sets[a] & sets[b])
    return out


def covisibility_clusters(
    m: NreMap, keyframes: np.ndarray, min_shared: int = 20
) -> list[np.ndarray]:
    """Split ranked ``keyframes`` into connected components of the covisibility graph; clusters
    keep the input order inside and are ordered by their best-ranked member."""
    kf = np.asarray(keyframes)
    cov = covisibility(m, kf)
    label = -np.ones(len(kf), dtype=np.int64)
    n_lab = 0
    for s in range(len(kf)):
        if label[s] >= 0:
            continue
        stack = [s]
        label[s] = n_lab
        while stack:
            a = stack.pop()
            for b in np.flatnonzero((cov[a] >= min_shared) & (label < 0)):
                label[b] = n_lab
                stack.append(int(b))
        n_lab += 1
    return [kf[label == c] for c in range(n_lab)]


def candidate_points(m: NreMap, keyframes: np.ndarray, max_points: int | None = None) -> np.ndarray:
    """Indices of points observed in ``keyframes``; when more than ``max_points``, those seen in
    the most of these keyframes (ties: longer tracks) are kept."""
    kf = np.asarray(keyframes)
    sel = np.isin(m.points.image_index, kf)
    pts = m.points.point_of_observation()[sel]
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, cnt = np.unique(pts, return_counts=True)
    if max_points is None or len(uniq) <= max_points:
        return uniq
    score = cnt * 1000 + np.minimum(m.points.track_lengths()[uniq], 999)
    keep = np.argsort(-score, kind="stable")[:max_points]
    return np.sort(uniq[keep])


def oracle_keyframes(m: NreMap, T_cam_world: np.ndarray, camera: CameraSpec, k: int) -> np.ndarray:
    """Oracle retrieval: the ``k`` keyframes sharing most points that project into the query
    (``camera``, true pose ``T_cam_world``), best first. For benchmarks only."""
    xyz = m.points.xyz
    Xc = xyz @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    uv, front = camera.project(Xc)
    vis = (
        front
        & (uv[:, 0] >= 0)
        & (uv[:, 1] >= 0)
        & (uv[:, 0] <= camera.width - 1)
        & (uv[:, 1] <= camera.height - 1)
    )
    pt = m.points.point_of_observation()
    counts = np.bincount(m.points.image_index[vis[pt]], minlength=m.n_keyframes)
    order = np.argsort(-counts, kind="stable")
    return order[: min(k, m.n_keyframes)][counts[order[: min(k, m.n_keyframes)]] > 0]
