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

import cv2
import numpy as np

from nre_localization.training.pairs import PairConfig, _apply, _inside, _warp, photometric


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
    image_a, image_b = images["a"], images["b"]
    if cfg.photometric:
        image_a = photometric(image_a, rng, cfg)
        image_b = photometric(image_b, rng, cfg)
    return {
        "image_a": image_a,
        "image_b": image_b,
        "pts_a": pts_a.astype(np.float32),
        "pts_b": pts_b.astype(np.float32),
        "valid": valid,
        "h_ab": hmap[0],
    }
