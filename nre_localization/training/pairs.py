"""Homographic training pairs with exact dense correspondences, from real photographs.

A pair is two synthetic views A and B of one planar photograph: output pixel ``p`` of view v shows
photo pixel ``H_v p`` (3x3, OpenCV pixel convention: the centre of the top-left pixel is (0, 0)).
The ground truth is exact: ``p_B = H_B^-1 H_A p_A``. Each view then gets its own photometric
degradation (exposure, gamma, contrast, colour, blur, motion blur, sensor noise, JPEG), the
conditions a robot camera meets.

Only NumPy and OpenCV: this module runs in the training loader on a bare GPU host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nre_localization.errors import DatasetError

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class PairConfig:
    """Geometric and photometric augmentation ranges (all sampled uniformly unless said)."""

    height: int = 384  # output view size (pixels)
    width: int = 512
    n_points: int = 768  # correspondences sampled per pair (uniform over view A)
    crop_min: float = 0.3  # base crop side as a fraction of the photo's largest 4:3 window
    max_rel_scale: float = 2.0  # scale of B relative to A in [1/x, x] (log-uniform)
    max_rot_deg: float = 15.0  # in-plane rotation of each view (relative up to 2x)
    max_persp: float = 0.18  # corner jitter as a fraction of the view size (perspective)
    max_shift: float = 0.15  # translation of each view as a fraction of its size
    photometric: bool = True
    p_motion_blur: float = 0.35
    p_gauss_blur: float = 0.3
    p_jpeg: float = 0.5
    p_dark: float = 0.35  # strong under-exposure with amplified sensor noise
    p_scene: float = 0.5  # fraction of piecewise-planar 3D scene pairs (training/scenes.py)


def list_photos(folder: str | Path) -> list[Path]:
    """All photos (jpg/png) under ``folder``, sorted; raises DatasetError when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS)
    if not files:
        raise DatasetError(f"no photos (.jpg/.png) under {folder}: run tools/make_training_data.py")
    return files


def read_photo(path: Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot decode image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _view_homography(rng: np.random.Generator, cfg: PairConfig, scale: float) -> np.ndarray:
    """Random view perturbation T (output pixel -> canonical pixel), about the view centre."""
    w, h = cfg.width, cfg.height
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    th = math.radians(rng.uniform(-cfg.max_rot_deg, cfg.max_rot_deg))
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    jitter = rng.uniform(-cfg.max_persp, cfg.max_persp, (4, 2)) * np.array([w, h])
    shift = rng.uniform(-cfg.max_shift, cfg.max_shift, 2) * np.array([w, h])
    dst = (src - c + jitter) @ rot.T * scale + c + shift
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))


def _jacobian_scale(hmat: np.ndarray, x: float, y: float) -> float:
    """sqrt(|det J|) of the homography at (x, y): linear magnification of output -> source."""
    p = hmat @ np.array([x, y, 1.0])
    z = p[2]
    j = (hmat[:2, :2] * z - np.outer(p[:2], hmat[2, :2])) / (z * z)
    return math.sqrt(abs(np.linalg.det(j)))


def _warp(photo: np.ndarray, h_out_to_photo: np.ndarray, cfg: PairConfig) -> np.ndarray:
    """Render a view; photos are pre-shrunk (area filter) when the warp would minify > 1.5x."""
    mag = _jacobian_scale(h_out_to_photo, (cfg.width - 1) / 2, (cfg.height - 1) / 2)
    hmat = h_out_to_photo
    src = photo
    if mag > 1.5:
        # (a plane seen at grazing angles can ask for any shrink: keep at least 16 px)
        f = max(1.0 / mag, 16.0 / min(photo.shape[:2]))
        src = cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        # pixel p of the shrunk image shows the original at (p + 0.5) / f - 0.5
        sy, sx = photo.shape[0] / src.shape[0], photo.shape[1] / src.shape[1]
        to_small = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
        hmat = to_small @ h_out_to_photo
    return cv2.warpPerspective(
        src,
        hmat,
        (cfg.width, cfg.height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def photometric(img: np.ndarray, rng: np.random.Generator, cfg: PairConfig) -> np.ndarray:
    """Degrade an RGB uint8 view like a robot camera: blur, exposure, gamma, colour, noise, JPEG."""
    out = img
    if rng.random() < cfg.p_motion_blur:
        length = int(rng.integers(3, 16))
        ang = rng.uniform(0, 180)
        line = np.zeros((length, length), np.float32)
        line[length // 2, :] = 1.0
        m = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), ang, 1.0)
        kernel = cv2.warpAffine(line, m, (length, length)).astype(np.float32)
        kernel = kernel / max(float(kernel.sum()), 1e-6)
        out = cv2.filter2D(out, -1, kernel, borderType=cv2.BORDER_REFLECT)
    elif rng.random() < cfg.p_gauss_blur:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 2.0))
    # White balance, contrast, gamma and exposure are pointwise: one 256-entry table per channel.
    gain = np.exp(rng.normal(0.0, 0.08, 3))  # white balance
    mean = float((out.reshape(-1, 3).mean(0) / 255.0 * gain).mean())
    contrast = rng.uniform(0.6, 1.4)
    gamma = rng.uniform(0.6, 1.6)
    noise = rng.uniform(0.0, 0.02)
    if rng.random() < cfg.p_dark:
        exposure = rng.uniform(0.12, 0.45)
        noise = rng.uniform(0.01, 0.05)
    else:
        exposure = rng.uniform(0.6, 1.6)  # > 1 saturates highlights (harsh exposure)
    v = np.arange(256)[:, None] / 255.0 * gain[None, :]  # [256, 3]
    lut = (np.clip((v - mean) * contrast + mean, 0, 1) ** gamma * exposure).astype(np.float32)
    x = np.stack([lut[out[..., c], c] for c in range(3)], axis=-1)
    # Sensor noise: shot noise (variance ~ signal) plus read noise, as one Gaussian field.
    sigma = noise * np.sqrt(np.clip(x, 0, 1) + 0.09)
    x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < cfg.p_jpeg:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            out = decoded
    return out


def make_pair(
    photo: np.ndarray, rng: np.random.Generator, cfg: PairConfig
) -> dict[str, np.ndarray]:
    """One training pair from an RGB uint8 photo.

    Returns ``image_a``, ``image_b``: uint8 ``[H, W, 3]``; ``pts_a``, ``pts_b``: float32 ``[N, 2]``
    pixel (x, y) in A and their exact positions in B; ``valid``: bool ``[N]`` (A pixel shows the
    photo and its B position lies inside B and shows the photo); ``h_ab``: float64 ``[3, 3]``.
    """
    ph, pw = photo.shape[:2]
    w, h = cfg.width, cfg.height
    # Base crop: the largest window of the view's aspect ratio, times a random fraction.
    side = min(pw / w, ph / h) * rng.uniform(cfg.crop_min, 1.0)
    x0 = rng.uniform(0, max(pw - side * w, 0))
    y0 = rng.uniform(0, max(ph - side * h, 0))
    base = np.array([[side, 0, x0 + 0.5 * side - 0.5], [0, side, y0 + 0.5 * side - 0.5], [0, 0, 1]])
    rel = math.exp(rng.uniform(-1, 1) * math.log(cfg.max_rel_scale) / 2)
    h_a = base @ _view_homography(rng, cfg, rel)
    h_b = base @ _view_homography(rng, cfg, 1.0 / rel)
    image_a = _warp(photo, h_a, cfg)
    image_b = _warp(photo, h_b, cfg)
    if cfg.photometric:
        image_a = photometric(image_a, rng, cfg)
        image_b = photometric(image_b, rng, cfg)
    h_ab = np.linalg.inv(h_b) @ h_a
    pts_a = np.stack(
        [rng.uniform(0, w - 1, cfg.n_points), rng.uniform(0, h - 1, cfg.n_points)], axis=1
    )
    pts_b = _apply(h_ab, pts_a)
    in_photo = _inside(_apply(h_a, pts_a), pw, ph, 1.0)
    in_b = _inside(pts_b, w, h, 0.0)
    return {
        "image_a": image_a,
        "image_b": image_b,
        "pts_a": pts_a.astype(np.float32),
        "pts_b": pts_b.astype(np.float32),
        "valid": in_photo & in_b,
        "h_ab": h_ab,
    }


def _apply(hmat: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ hmat.T
    z = p[:, 2:3]
    z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    return p[:, :2] / z


def _inside(pts: np.ndarray, w: float, h: float, margin: float) -> np.ndarray:
    x, y = pts[:, 0], pts[:, 1]
    return (x >= margin) & (y >= margin) & (x <= w - 1 - margin) & (y <= h - 1 - margin)
