"""Homographic training pairs with exact dense correspondences, from real photographs.

A pair is two synthetic views A and B of one planar photograph: output pixel ``p`` of view v shows
photo pixel ``H_v p`` (3x3, OpenCV pixel convention: the centre of the top-left pixel is (0, 0)).
The ground truth is exact: ``p_B = H_B^-1 H_A p_A``. Each view then gets its own photometric
degradation (exposure, gamma, contrast, colour, blur, motion blur, sensor noise, JPEG), the
conditions a robot camera meets.

Two code paths render the same distribution of pairs (``PairConfig.fast``):

* fast (training): photos carry a pyramid (:class:`Photo`, area-filtered halvings built once per
  loader worker), a warp reads the level that leaves at most 1.5x minification instead of resizing
  the whole photo; the pointwise photometric chain is two ``cv2.LUT`` look-ups (value and noise
  sigma) and the sensor noise is a random window of a fixed Gaussian field. About 3x faster.
* legacy (``fast=False``): the original path, bit for bit (the fixed validation pairs of
  ``training/loop.py`` are built with it, so validation curves of all runs compare).

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
    p_scene: float = 0.25  # fraction of card-scene 3D pairs (training/scenes.py: make_scene_pair)
    p_room: float = 0.35  # fraction of room/box 3D pairs (training/scenes.py: make_room_pair)
    # homographic pairs: the base crop never magnifies the photo more than 1 / min_src_per_px
    # (blurry upsampled views teach the fine level nothing); 0 = unlimited (legacy)
    min_src_per_px: float = 0.8
    fast: bool = True  # pyramid warps + LUT photometrics (see module docstring); False = legacy


class Photo:
    """An RGB uint8 photo with its area-filtered pyramid: ``levels[0]`` is the photo, each next level
    about half the size (down to a 16 px side); ``scales[l]`` = photo pixels per level-l pixel."""

    def __init__(self, image: np.ndarray, min_side: int = 16) -> None:
        self.image = image
        self.levels = [image]
        self.scales = [1.0]
        h, w = image.shape[:2]
        while min(self.levels[-1].shape[:2]) >= 2 * min_side:
            prev = self.levels[-1]
            nxt = cv2.resize(
                prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA
            )
            self.levels.append(nxt)
            self.scales.append(w / nxt.shape[1])
        self.shape = image.shape

    def level_for(self, mag: float) -> int:
        """Pyramid level whose remaining minification for a warp of magnification ``mag`` (photo
        pixels per output pixel) is at most 1.5 (and at least 0.75)."""
        if mag <= 1.5:
            return 0
        return min(int(math.floor(math.log2(mag / 1.5))) + 1, len(self.levels) - 1)

    def to_level(self, level: int) -> np.ndarray:
        """3x3 map photo pixel -> level pixel (pixel centres: p_l = (p + 0.5) / s - 0.5 per axis)."""
        src = self.levels[level]
        sx = self.image.shape[1] / src.shape[1]
        sy = self.image.shape[0] / src.shape[0]
        return np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])


PhotoLike = np.ndarray | Photo


def as_photo(photo: PhotoLike) -> Photo:
    return photo if isinstance(photo, Photo) else Photo(photo)


def _image(photo: PhotoLike) -> np.ndarray:
    return photo.image if isinstance(photo, Photo) else photo


def list_photos(folder: str | Path) -> list[Path]:
    """All photos (jpg/png) under ``folder``, sorted; raises DatasetError when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS)
    if not files:
        raise DatasetError(f"no photos (.jpg/.png) under {folder}: run tools/make_training_data.py")
    return files


def read_photo(path: Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` (wrap in :class:`Photo` for the fast pyramid path)."""
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


def _warp(
    photo: PhotoLike,
    h_out_to_photo: np.ndarray,
    cfg: PairConfig,
    border: int = cv2.BORDER_CONSTANT,
) -> np.ndarray:
    """Render a view; photos are pre-shrunk (area filter) when the warp would minify > 1.5x: the
    fast path reads a pyramid level, the legacy path resizes the photo to exactly 1 / mag."""
    mag = _jacobian_scale(h_out_to_photo, (cfg.width - 1) / 2, (cfg.height - 1) / 2)
    if cfg.fast:
        pyr = as_photo(photo)
        lev = pyr.level_for(mag) if np.isfinite(mag) else len(pyr.levels) - 1
        return cv2.warpPerspective(
            pyr.levels[lev],
            pyr.to_level(lev) @ h_out_to_photo,
            (cfg.width, cfg.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=border,
            borderValue=(0, 0, 0),
        )
    photo = _image(photo)
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


_NOISE: dict[tuple[int, ...], np.ndarray] = {}


def _noise_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random ``shape`` window (random offset and flips) of a fixed unit Gaussian field twice the
    size per axis (generated once per process): white noise at the cost of a view."""
    key = tuple(shape)
    bank = _NOISE.get(key)
    if bank is None:
        h, w = shape[:2]
        bank = np.random.default_rng(12345).standard_normal((2 * h, 2 * w, *shape[2:]), np.float32)
        _NOISE[key] = bank
    h, w = shape[:2]
    oy, ox, flip = int(rng.integers(h)), int(rng.integers(w)), int(rng.integers(4))
    win = bank[oy : oy + h, ox : ox + w]
    if flip & 1:
        win = win[::-1]
    if flip & 2:
        win = win[:, ::-1]
    return win


def _blur(out: np.ndarray, rng: np.random.Generator, cfg: PairConfig) -> np.ndarray:
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
    return out


def _jpeg(out: np.ndarray, rng: np.random.Generator, cfg: PairConfig) -> np.ndarray:
    if rng.random() < cfg.p_jpeg:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            out = decoded
    return out


def _draw_tone(
    rng: np.random.Generator, cfg: PairConfig
) -> tuple[np.ndarray, float, float, float, float]:
    """The photometric draws shared by both paths, in their fixed order: white-balance gains
    (float64 ``[3]``), contrast, gamma, noise level and exposure (dark with probability
    ``cfg.p_dark``, with stronger noise; otherwise up to 1.6x, saturating highlights)."""
    gain = np.exp(rng.normal(0.0, 0.08, 3))
    contrast = rng.uniform(0.6, 1.4)
    gamma = rng.uniform(0.6, 1.6)
    noise = rng.uniform(0.0, 0.02)
    if rng.random() < cfg.p_dark:
        exposure = rng.uniform(0.12, 0.45)
        noise = rng.uniform(0.01, 0.05)
    else:
        exposure = rng.uniform(0.6, 1.6)
    return gain, contrast, gamma, noise, exposure


def _photometric_fast(img: np.ndarray, rng: np.random.Generator, cfg: PairConfig) -> np.ndarray:
    """:func:`photometric`'s distribution, with LUTs and the noise field (float32 throughout)."""
    out = _blur(img, rng, cfg)
    gain64, contrast, gamma, noise, exposure = _draw_tone(rng, cfg)
    gain = gain64.astype(np.float32)
    mean = float(np.dot(cv2.mean(out)[:3], gain) / (3 * 255.0))
    v = np.arange(256, dtype=np.float32)[:, None] / 255.0 * gain[None, :]  # [256, 3]
    val = np.clip((v - mean) * contrast + mean, 0, 1) ** gamma * exposure
    # shot + read noise sigma is a function of the value, hence of the input byte: a second LUT
    sig = noise * np.sqrt(np.clip(val, 0, 1) + 0.09)
    lut_val = (val * 255.0 + 0.5).astype(np.float32).reshape(1, 256, 3)
    lut_sig = (sig * 255.0).astype(np.float32).reshape(1, 256, 3)
    x = cv2.LUT(out, lut_val)
    s = cv2.LUT(out, lut_sig)
    s *= _noise_field(x.shape, rng)
    x += s
    np.clip(x, 0, 255, out=x)
    return _jpeg(x.astype(np.uint8), rng, cfg)


def photometric(img: np.ndarray, rng: np.random.Generator, cfg: PairConfig) -> np.ndarray:
    """Degrade an RGB uint8 view like a robot camera: blur, exposure, gamma, colour, noise, JPEG."""
    if cfg.fast:
        return _photometric_fast(img, rng, cfg)
    out = _blur(img, rng, cfg)
    # White balance, contrast, gamma and exposure are pointwise: one 256-entry table per channel.
    gain, contrast, gamma, noise, exposure = _draw_tone(rng, cfg)
    mean = float((out.reshape(-1, 3).mean(0) / 255.0 * gain).mean())
    v = np.arange(256)[:, None] / 255.0 * gain[None, :]  # [256, 3]
    lut = (np.clip((v - mean) * contrast + mean, 0, 1) ** gamma * exposure).astype(np.float32)
    x = np.stack([lut[out[..., c], c] for c in range(3)], axis=-1)
    # Sensor noise: shot noise (variance ~ signal) plus read noise, as one Gaussian field.
    sigma = noise * np.sqrt(np.clip(x, 0, 1) + 0.09)
    x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _jpeg(out, rng, cfg)


def make_pair(photo: PhotoLike, rng: np.random.Generator, cfg: PairConfig) -> dict[str, np.ndarray]:
    """One training pair from an RGB uint8 photo (or a :class:`Photo` with its pyramid).

    Returns ``image_a``, ``image_b``: uint8 ``[H, W, 3]``; ``pts_a``, ``pts_b``: float32 ``[N, 2]``
    pixel (x, y) in A and their exact positions in B; ``valid``: bool ``[N]`` (A pixel shows the
    photo and its B position lies inside B and shows the photo); ``h_ab``: float64 ``[3, 3]``.
    """
    if cfg.fast:
        photo = as_photo(photo)
    ph, pw = photo.shape[:2]
    w, h = cfg.width, cfg.height
    # Base crop: the largest window of the view's aspect ratio, times a random fraction.
    side = min(pw / w, ph / h) * rng.uniform(cfg.crop_min, 1.0)
    if cfg.min_src_per_px > 0:  # (no extra random draw: the legacy sequence is kept)
        side = max(side, min(pw / w, ph / h, cfg.min_src_per_px))
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
