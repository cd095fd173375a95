"""Piecewise-planar 3D training pairs: parallax and occlusion with exact correspondences.

A scene is a background plane plus a few closer textured quads ("cards"), every plane textured with a
crop of a real photograph, seen by two pinhole cameras A and B. In A's frame a plane is
``n^T X = d`` (unit normal ``n``, ``d > 0``); with ``X_B = R X_A + t`` the plane induces the exact pixel
mapping ``p_B ~ K (R + t n^T / d) K^-1 p_A``. Views are painted far to near, so a card hides what is
behind it, and because the cards are at different depths the camera translation moves them relative
to the background (parallax). A correspondence is kept only when the same plane is visible at both
ends and neither end lies on a plane boundary (occluded points are therefore excluded).

Output format is that of :func:`training.pairs.make_pair`. NumPy + OpenCV only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from nre_localization.training.pairs import (
    PairConfig,
    Photo,
    PhotoLike,
    _apply,
    _inside,
    _warp,
    as_photo,
    photometric,
)


def _rot(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Random rotation matrix with angle up to ``max_deg`` about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = math.radians(rng.uniform(-max_deg, max_deg))
    rvec = (axis * ang).reshape(3, 1)
    return cv2.Rodrigues(rvec)[0]


def _crop(photo: np.ndarray, rng: np.random.Generator, aspect: float, frac: tuple[float, float]):
    """A random crop rectangle (x0, y0, w, h) of ``photo`` with the given aspect (w / h)."""
    ph, pw = photo.shape[:2]
    wmax = min(pw, ph * aspect)
    w = wmax * rng.uniform(*frac)
    h = w / aspect
    return rng.uniform(0, pw - w), rng.uniform(0, ph - h), w, h


def _rect(x0: float, y0: float, w: float, h: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.float32)


def _finish_pair(
    img_a: np.ndarray,
    img_b: np.ndarray,
    pts_a: np.ndarray,
    pts_b: np.ndarray,
    valid: np.ndarray,
    h_ab: np.ndarray,
    rng: np.random.Generator,
    cfg: PairConfig,
) -> dict[str, np.ndarray]:
    """The pair dictionary of both scene kinds (see :func:`make_scene_pair`), with the independent
    photometric degradation of each view when ``cfg.photometric``."""
    if cfg.photometric:
        img_a = photometric(img_a, rng, cfg)
        img_b = photometric(img_b, rng, cfg)
    return {
        "image_a": img_a,
        "image_b": img_b,
        "pts_a": pts_a.astype(np.float32),
        "pts_b": pts_b.astype(np.float32),
        "valid": valid,
        "h_ab": h_ab,
    }


def make_scene_pair(
    photos: list[np.ndarray], rng: np.random.Generator, cfg: PairConfig, n_cards: int | None = None
) -> dict[str, np.ndarray] | None:
    """One pair of a random piecewise-planar scene (see module docstring); None if degenerate."""
    w, h = cfg.width, cfg.height
    f = w * rng.uniform(0.7, 1.2)
    k = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    kinv = np.linalg.inv(k)
    d0 = 1.0
    n_cards = int(rng.integers(1, 5)) if n_cards is None else n_cards
    # camera B: rotation up to 10 deg, translation 5-30 % of the background distance
    r = _rot(rng, 10.0)
    t = rng.normal(size=3)
    t *= rng.uniform(0.05, 0.3) * d0 / np.linalg.norm(t)

    planes = []  # (photo index, texture corners [4,2] in photo, A corners [4,2], n, d)
    # background: a tilted plane covering all of A (texture = crop of a photo)
    i0 = int(rng.integers(len(photos)))
    n0 = _rot(rng, 30.0) @ np.array([0.0, 0.0, 1.0])
    crop = _crop(photos[i0], rng, w / h, (0.3, 1.0))
    a_corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    a_corners += rng.uniform(-0.1, 0.1, (4, 2)).astype(np.float32) * np.array([w, h], np.float32)
    planes.append((i0, _rect(*crop), a_corners, n0, d0))
    for _ in range(n_cards):
        i = int(rng.integers(len(photos)))
        aspect = rng.uniform(0.6, 1.7)
        crop = _crop(photos[i], rng, aspect, (0.15, 0.7))
        side = w * rng.uniform(0.15, 0.45)
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        hw, hh = side / 2, side / aspect / 2
        quad = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        th = rng.uniform(-0.4, 0.4)
        quad = quad @ np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]).T
        quad += np.array([cx, cy]) + rng.uniform(-0.08, 0.08, (4, 2)) * side
        n = _rot(rng, 25.0) @ np.array([0.0, 0.0, 1.0])
        planes.append((i, _rect(*crop), quad.astype(np.float32), n, d0 * rng.uniform(0.3, 0.8)))

    views = {"a": np.eye(3), "b": None}
    images = {v: np.zeros((h, w, 3), np.uint8) for v in views}
    labels = {v: np.full((h, w), -1, np.int32) for v in views}
    h_ab = []
    # paint far to near: background first, then cards by decreasing plane distance
    order = [0] + sorted(range(1, len(planes)), key=lambda j: -planes[j][4])
    for j in order:
        pi, tex, a_quad, n, d = planes[j]
        hab = k @ (r + np.outer(t, n) / d) @ kinv
        # A pixels of the quad must be in front of B: depth of X_B > 0 at the corners
        pts3 = np.concatenate([a_quad, np.ones((4, 1))], 1) @ kinv.T
        z = d / (pts3 @ n)
        if np.any(z <= 0) or np.any(((pts3 * z[:, None]) @ r.T + t)[:, 2] <= 0.05 * d0):
            return None
        h_ab.append((j, hab))
        g_a = cv2.getPerspectiveTransform(tex, a_quad)  # photo -> A
        for v, hv in (("a", np.eye(3)), ("b", hab)):
            g = hv @ g_a  # photo -> view
            corners = _apply(g, tex)
            if not np.all(np.isfinite(corners)):
                return None
            mask = np.zeros((h, w), np.uint8)
            poly = np.clip(corners, -8 * w, 8 * w)
            cv2.fillConvexPoly(mask, np.round(poly * 16).astype(np.int32), 1, cv2.LINE_8, 4)
            if not mask.any():
                continue
            rendered = _warp(photos[pi], np.linalg.inv(g), cfg)
            m = mask.astype(bool)
            images[v][m] = rendered[m]
            labels[v][m] = j

    hmap = dict(h_ab)
    pts_a = np.stack([rng.uniform(0, w - 1, cfg.n_points), rng.uniform(0, h - 1, cfg.n_points)], 1)
    ia = np.clip(np.round(pts_a).astype(int), 0, [w - 1, h - 1])
    lab_a = labels["a"][ia[:, 1], ia[:, 0]]
    pts_b = np.zeros_like(pts_a)
    for j, hab in hmap.items():
        sel = lab_a == j
        if sel.any():
            pts_b[sel] = _apply(hab, pts_a[sel])
    in_b = _inside(pts_b, w, h, 0.0) & (lab_a >= 0)
    ib = np.clip(np.round(np.nan_to_num(pts_b)).astype(int), 0, [w - 1, h - 1])
    lab_b = labels["b"][ib[:, 1], ib[:, 0]]
    kernel = np.ones((5, 5), np.uint8)
    edge = {
        v: cv2.dilate(lab.astype(np.float32), kernel) != cv2.erode(lab.astype(np.float32), kernel)
        for v, lab in labels.items()
    }
    valid = (
        in_b & (lab_b == lab_a) & ~edge["a"][ia[:, 1], ia[:, 0]] & ~edge["b"][ib[:, 1], ib[:, 0]]
    )
    return _finish_pair(images["a"], images["b"], pts_a, pts_b, valid, hmap[0], rng, cfg)


# --- Rooms: boxes of textured planes seen from inside, with boxes and panels, z-buffered ---------


@dataclass
class _Surface:
    """A textured plane ``n . X = d`` (world frame); texture pixel (tx, ty) shows the plane point
    ``origin + e1 (tx - ox) / s + e2 (ty - oy) / s``. ``corners`` (4 world points) bound a finite
    rectangle; None = the whole plane (room walls)."""

    n: np.ndarray
    d: float
    origin: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    tex: Photo
    s: float  # texture pixels per metre
    ox: float
    oy: float
    corners: np.ndarray | None
    shade: float
    mirror: bool  # photos: mirrored tiling; textures: periodic tiling


def _camera(forward: np.ndarray, roll_deg: float) -> np.ndarray:
    """World -> camera rotation (rows x, y, z) looking along ``forward``; world y points down."""
    z = forward / np.linalg.norm(forward)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    return np.stack([c * x + s * y, -s * x + c * y, z])


def _tex_to_view(surf: _Surface, k: np.ndarray, rot: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Homography texture pixel -> view pixel of camera (rot, cam): X_c = rot (X_w - cam)."""
    o = surf.origin - (surf.e1 * surf.ox + surf.e2 * surf.oy) / surf.s
    cols = np.stack([rot @ surf.e1 / surf.s, rot @ surf.e2 / surf.s, rot @ (o - cam)], axis=1)
    return k @ cols


def _clip_near(pts: np.ndarray, near: float) -> np.ndarray:
    """Convex polygon ``[M, 3]`` (camera frame) clipped to ``z >= near`` (Sutherland-Hodgman)."""
    out = []
    for i in range(len(pts)):
        a, b = pts[i], pts[(i + 1) % len(pts)]
        ina, inb = a[2] >= near, b[2] >= near
        if ina:
            out.append(a)
        if ina != inb:
            f = (near - a[2]) / (b[2] - a[2])
            out.append(a + f * (b - a))
    return np.array(out).reshape(-1, 3)


def _remap_points(src: np.ndarray, u: np.ndarray, v: np.ndarray, border: int) -> np.ndarray:
    """Bilinear samples ``[N, 3]`` of ``src`` at (u, v) (cv2.remap wants < 32767 rows: the points
    are laid out as rows of 1024)."""
    n = len(u)
    cols = 1024
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = u, v
    got = cv2.remap(
        src, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR, borderMode=border
    )
    return got.reshape(-1, 3)[:n]


def _render_view(
    surfaces: list[_Surface], k: np.ndarray, rot: np.ndarray, cam: np.ndarray, w: int, h: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffered view: image uint8 ``[h, w, 3]``, label int16 ``[h, w]`` (surface index, -1 none),
    inverse depth float32 ``[h, w]``. Each pixel reads its surface's texture at the pyramid level
    of its own magnification (grazing floors stay anti-aliased)."""
    kinv = np.linalg.inv(k)
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    best = np.zeros((h, w), np.float32)
    label = np.full((h, w), -1, np.int16)
    for j, sf in enumerate(surfaces):
        n_c = rot @ sf.n
        d_c = sf.d - float(sf.n @ cam)
        if abs(d_c) < 1e-6:
            continue
        a = (kinv.T @ n_c) / d_c  # inverse depth = a . (x, y, 1)
        x0, x1, y0, y1 = 0, w, 0, h
        mask = None
        if sf.corners is not None:
            poly = _clip_near((sf.corners - cam) @ rot.T, 0.05)
            if len(poly) < 3:
                continue
            uv = (poly @ k.T)[:, :2] / poly[:, 2:3]
            uv = np.clip(uv, -4 * w, 5 * w)
            x0 = max(int(math.floor(uv[:, 0].min())), 0)
            y0 = max(int(math.floor(uv[:, 1].min())), 0)
            x1 = min(int(math.ceil(uv[:, 0].max())) + 1, w)
            y1 = min(int(math.ceil(uv[:, 1].max())) + 1, h)
            if x1 <= x0 or y1 <= y0:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            off = np.array([x0, y0])
            cv2.fillConvexPoly(mask, np.round((uv - off) * 16).astype(np.int32), 1, cv2.LINE_8, 4)
        iz = (np.float32(a[0]) * xs[x0:x1])[None, :] + (
            np.float32(a[1]) * ys[y0:y1] + np.float32(a[2])
        )[:, None]
        sub = best[y0:y1, x0:x1]
        m = iz > sub
        if mask is not None:
            m &= mask.view(bool)
        np.copyto(sub, iz, where=m)
        np.copyto(label[y0:y1, x0:x1], np.int16(j), where=m)
    image = np.zeros((h, w, 3), np.uint8)
    flat = label.ravel()
    counts = np.bincount(flat.astype(np.int64) + 1, minlength=len(surfaces) + 1)
    for j in np.flatnonzero(counts[1:]):
        sf = surfaces[int(j)]
        idx = np.flatnonzero(flat == j)
        px = (idx % w).astype(np.float32)
        py = (idx // w).astype(np.float32)
        hinv = np.linalg.inv(_tex_to_view(sf, k, rot, cam))
        hinv /= np.abs(hinv).max()
        hf = hinv.astype(np.float32)
        q2 = hf[2, 0] * px + hf[2, 1] * py + hf[2, 2]
        q2[np.abs(q2) < 1e-20] = 1e-20
        tx = (hf[0, 0] * px + hf[0, 1] * py + hf[0, 2]) / q2
        ty = (hf[1, 0] * px + hf[1, 1] * py + hf[1, 2]) / q2
        nlev = len(sf.tex.levels)
        if nlev > 1:
            mag = np.sqrt(np.float32(abs(np.linalg.det(hinv))) / np.abs(q2) ** 3)
            lev = np.floor(np.log2(np.maximum(mag, 1e-6) / 1.5)).astype(np.int64) + 1
            np.clip(lev, 0, nlev - 1, out=lev)
            lev_counts = np.bincount(lev, minlength=nlev)
        else:
            lev = None
            lev_counts = np.array([len(idx)])
        vals = np.empty((len(idx), 3), np.uint8)
        for lv in np.flatnonzero(lev_counts):
            sel = slice(None) if lev_counts[lv] == len(idx) else (lev == lv)
            src = sf.tex.levels[int(lv)]
            th, tw = src.shape[:2]
            sx = np.float32(sf.tex.image.shape[1] / tw)
            sy = np.float32(sf.tex.image.shape[0] / th)
            u = (tx[sel] + 0.5) / sx - 0.5
            v = (ty[sel] + 0.5) / sy - 0.5
            if sf.mirror:  # mirrored tiling: continuous at the seams
                u = np.mod(u, 2 * tw)
                u = np.where(u > tw - 0.5, 2 * tw - 1 - u, u)
                v = np.mod(v, 2 * th)
                v = np.where(v > th - 0.5, 2 * th - 1 - v, v)
                border = cv2.BORDER_REFLECT
            else:
                u, v = np.mod(u, tw), np.mod(v, th)
                border = cv2.BORDER_WRAP
            vals[sel] = _remap_points(src, u, v, border)
        if sf.shade != 1.0:
            vals = cv2.convertScaleAbs(vals, alpha=sf.shade).reshape(-1, 3)
        image.reshape(-1, 3)[idx] = vals
    return image, label, best


def _surface_for(
    rng: np.random.Generator,
    n: np.ndarray,
    d: float,
    origin: np.ndarray,
    e1: np.ndarray,
    e2: np.ndarray,
    tex: Photo,
    is_photo: bool,
    span: float,
    corners: np.ndarray | None = None,
) -> _Surface:
    """A textured surface (random offset, 90-degree rotation for textures, per-surface shading)."""
    if not is_photo and rng.random() < 0.5:
        e1, e2 = e2, -e1
    th, tw = tex.shape[:2]
    # textures: 250-1000 texture pixels per metre (log-uniform: sharp up close, fine far away);
    # photos: the photo's width spans ``span`` metres
    s = math.exp(rng.uniform(math.log(250.0), math.log(1000.0))) if not is_photo else tw / span
    return _Surface(
        n=n,
        d=d,
        origin=origin,
        e1=e1,
        e2=e2,
        tex=tex,
        s=s,
        ox=float(rng.uniform(0, tw)),
        oy=float(rng.uniform(0, th)),
        corners=corners,
        shade=float(rng.uniform(0.55, 1.15)),
        mirror=is_photo,
    )


def make_room_pair(
    photos: list[PhotoLike],
    textures: list[PhotoLike],
    rng: np.random.Generator,
    cfg: PairConfig,
    n_boxes: int | None = None,
    n_panels: int | None = None,
) -> dict[str, np.ndarray] | None:
    """One pair inside a random room: floor, ceiling and four walls (infinite planes of a box
    around the cameras), boxes standing on the floor and free-standing panels, textured with
    material ``textures`` (periodic tiling) and ``photos`` (murals, facades, pictures). Rendered
    with a z-buffer, so every occlusion is exact: a correspondence is kept only where B sees the
    same surface at the true position (not occluded) away from surface boundaries, and where
    the two views' local scales differ less than 3x. Camera B stands 5-50 % of the viewing depth
    away and looks near A's centre point (parallax, viewpoint change up to ~30 degrees). Output
    format of :func:`training.pairs.make_pair`; None when degenerate."""
    w, h = cfg.width, cfg.height
    pyr = [as_photo(p) for p in photos]
    tex = [as_photo(t) for t in textures] or pyr

    def pick(p_photo: float) -> tuple[Photo, bool]:
        if rng.random() < p_photo:
            return pyr[int(rng.integers(len(pyr)))], True
        return tex[int(rng.integers(len(tex)))], False

    f = w * rng.uniform(0.55, 1.0)
    k = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    # room: x in [xl, xr], y in [yc, yf] (y down), z in [zn, zb]; camera A at the origin
    xl, xr = -rng.uniform(0.8, 4.0), rng.uniform(0.8, 4.0)
    yf = rng.uniform(1.0, 1.8)  # eye height over the floor
    yc = -rng.uniform(0.6, 2.5)
    zb, zn = rng.uniform(3.0, 14.0), -rng.uniform(0.5, 3.0)
    ex, ey, ez = np.eye(3)
    surfaces: list[_Surface] = []
    for n, d, origin, e1, e2, p_photo in (
        (ey, yf, np.array([0, yf, 0.0]), ex, ez, 0.15),  # floor
        (ey, yc, np.array([0, yc, 0.0]), ex, ez, 0.1),  # ceiling
        (ex, xl, np.array([xl, 0, 0.0]), ez, ey, 0.5),  # left wall
        (ex, xr, np.array([xr, 0, 0.0]), -ez, ey, 0.5),  # right wall
        (ez, zb, np.array([0, 0, zb]), ex, ey, 0.6),  # back wall (murals, facades)
        (ez, zn, np.array([0, 0, zn]), -ex, ey, 0.5),  # wall behind A
    ):
        t, is_photo = pick(p_photo)
        span = rng.uniform(2.0, 8.0)  # (photos only)
        surfaces.append(_surface_for(rng, n, d, origin, e1, e2, t, is_photo, span))
    # boxes standing on the floor (5 faces), ahead of A
    n_boxes = int(rng.integers(0, 4)) if n_boxes is None else n_boxes
    boxes = []
    for _ in range(n_boxes):
        sx, sz = rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.5)
        sy = rng.uniform(0.3, min(1.8, yf - yc - 0.2))
        cx = rng.uniform(xl + sx / 2, xr - sx / 2) if xr - xl > sx else 0.0
        cz = rng.uniform(1.2 + sz / 2, max(zb - sz / 2, 1.3 + sz / 2))
        lo = np.array([cx - sx / 2, yf - sy, cz - sz / 2])
        hi = np.array([cx + sx / 2, yf, cz + sz / 2])
        boxes.append((lo, hi))
        t, is_photo = pick(0.2)
        span = rng.uniform(1.0, 3.0)  # (photos only)
        faces = (  # (normal, plane offset, e1, e2, corners as lo/hi choices per axis)
            (ey, lo[1], ex, ez, [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)]),  # top (y down)
            (ez, lo[2], ex, ey, [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)]),  # front
            (ez, hi[2], ex, ey, [(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)]),  # back
            (ex, lo[0], ez, ey, [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)]),  # left
            (ex, hi[0], ez, ey, [(1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 0)]),  # right
        )
        lohi = (lo, hi)
        for n, at, e1, e2, order in faces:
            corners = np.array([[lohi[i][0], lohi[j][1], lohi[m][2]] for i, j, m in order])
            surfaces.append(
                _surface_for(rng, n, float(at), corners[0], e1, e2, t, is_photo, span, corners)
            )
    # free-standing panels (pictures, boards, doors), roughly facing A
    n_panels = int(rng.integers(0, 4)) if n_panels is None else n_panels
    for _ in range(n_panels):
        t, is_photo = pick(0.6)
        pw_ = rng.uniform(0.4, 1.6)
        ph_ = pw_ * rng.uniform(0.5, 1.6)
        depth = rng.uniform(1.0, max(zb * 0.8, 1.1))
        ray = np.linalg.inv(k) @ np.array([rng.uniform(0, w), rng.uniform(0, h), 1.0])
        centre = ray * depth
        centre[0] = np.clip(centre[0], xl + 0.1, xr - 0.1)
        centre[1] = np.clip(centre[1], yc + 0.1, yf - 0.1)
        nrm = _rot(rng, 45.0) @ np.array([0.0, 0.0, -1.0])
        e1 = np.cross(np.array([0.0, 1.0, 0.0]), nrm)
        if np.linalg.norm(e1) < 1e-6:
            continue
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(nrm, e1)
        corners = np.array(
            [
                centre + a * e1 * pw_ / 2 + b * e2 * ph_ / 2
                for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))
            ]
        )
        span = pw_ * rng.uniform(1.0, 1.5)  # (photos only)
        surfaces.append(
            _surface_for(
                rng, nrm, float(nrm @ centre), corners[0], e1, e2, t, is_photo, span, corners
            )
        )

    # camera A: at the origin, random yaw / pitch / roll
    look = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.25, 0.25), 1.0])
    rot_a = _camera(look, rng.uniform(-5, 5))
    cam_a = np.zeros(3)
    img_a, lab_a, iz_a = _render_view(surfaces, k, rot_a, cam_a, w, h)
    zc = 1.0 / max(float(iz_a[h // 2, w // 2]), 1e-3)
    target = cam_a + rot_a[2] * zc + rng.uniform(-0.15, 0.15, 3) * zc
    base = rng.normal(size=3) * np.array([1.0, 0.3, 1.0])
    base *= rng.uniform(0.05, 0.5) * zc / np.linalg.norm(base)
    cam_b = cam_a + base
    lo_room = np.array([xl, yc, zn]) + 0.15
    hi_room = np.array([xr, yf, zb]) - 0.15
    cam_b = np.clip(cam_b, lo_room, hi_room)
    for lo, hi in boxes:  # B must not stand inside a box
        if np.all(cam_b > lo - 0.1) and np.all(cam_b < hi + 0.1):
            return None
    fwd = target - cam_b
    if np.linalg.norm(fwd) < 0.2:
        return None
    rot_b = _camera(fwd, rng.uniform(-5, 5))
    img_b, lab_b, _ = _render_view(surfaces, k, rot_b, cam_b, w, h)

    pts_a = np.stack([rng.uniform(0, w - 1, cfg.n_points), rng.uniform(0, h - 1, cfg.n_points)], 1)
    ia = np.clip(np.round(pts_a).astype(int), 0, [w - 1, h - 1])
    la = lab_a[ia[:, 1], ia[:, 0]].astype(np.int64)
    pts_b = np.full_like(pts_a, -1e6)
    ratio = np.ones(len(pts_a))
    h_main, n_main = np.eye(3), 0
    for j in np.unique(la):
        if j < 0:
            continue
        sel = la == j
        sf = surfaces[int(j)]
        hab = _tex_to_view(sf, k, rot_b, cam_b) @ np.linalg.inv(_tex_to_view(sf, k, rot_a, cam_a))
        pts_b[sel] = _apply(hab, pts_a[sel])
        q = np.concatenate([pts_a[sel], np.ones((int(sel.sum()), 1))], 1) @ hab[2]
        ratio[sel] = np.sqrt(np.abs(np.linalg.det(hab)) / np.maximum(np.abs(q), 1e-12) ** 3)
        if int(sel.sum()) > n_main:
            h_main, n_main = hab, int(sel.sum())
    ok = np.all(np.isfinite(pts_b), axis=1)
    pts_b[~ok] = -1e6
    in_b = _inside(pts_b, w, h, 0.0) & (la >= 0)
    ib = np.clip(np.round(pts_b).astype(int), 0, [w - 1, h - 1])
    lb = lab_b[ib[:, 1], ib[:, 0]]
    kernel = np.ones((5, 5), np.uint8)
    edge = {
        v: cv2.dilate(lab.astype(np.float32), kernel) != cv2.erode(lab.astype(np.float32), kernel)
        for v, lab in (("a", lab_a), ("b", lab_b))
    }
    valid = (
        in_b
        & (lb == la)
        & ~edge["a"][ia[:, 1], ia[:, 0]]
        & ~edge["b"][ib[:, 1], ib[:, 0]]
        & (ratio > 1 / 3)
        & (ratio < 3)
    )
    return _finish_pair(img_a, img_b, pts_a, pts_b, valid, h_main, rng, cfg)
