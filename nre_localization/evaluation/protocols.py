"""Query protocols: images as a robot camera would deliver them.

``robot`` protocol (fixed settings, per-image randomness from an integer seed only):
1. resize to 640 px wide (aspect kept, ``cv2.INTER_AREA``); intrinsics follow
   :meth:`CameraSpec.scaled` (pixel-centre aware);
2. exposure: with probability 0.7 under-exposed (gain 0.30-0.55 in linear light), else harsh
   over-exposure (gain 1.6-2.4, highlights clip); sRGB gamma handled explicitly;
3. linear motion blur: length 4-10 px at 640 px, random direction;
4. sensor noise in linear light: shot noise (full well 400 e- at white, so a pixel at half grey
   has SNR ~14 before gain) plus read noise sigma 2/255, then 8-bit quantisation;
5. JPEG re-encoding at quality 80 (a compressed robot image stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nre_localization.datasets.common import CameraSpec


@dataclass(frozen=True)
class RobotSettings:
    width: int = 640
    p_dark: float = 0.7
    dark_gain: tuple[float, float] = (0.30, 0.55)
    bright_gain: tuple[float, float] = (1.6, 2.4)
    blur_px: tuple[float, float] = (4.0, 10.0)
    full_well: float = 400.0
    read_noise: float = 2.0 / 255.0
    jpeg_quality: int = 80


ROBOT = RobotSettings()


def robot_size(width: int, height: int, settings: RobotSettings = ROBOT) -> tuple[int, int]:
    """Output (width, height) of the robot protocol for an input size."""
    w = settings.width
    return w, int(round(height * w / width))


def robot_camera(camera: CameraSpec, settings: RobotSettings = ROBOT) -> CameraSpec:
    """The camera of a robot-protocol image made from an image of ``camera``."""
    return camera.scaled(*robot_size(camera.width, camera.height, settings))


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def motion_kernel(length: float, angle_rad: float) -> np.ndarray:
    """Normalised linear motion-blur kernel (odd size) of ``length`` pixels at ``angle_rad``."""
    size = int(np.ceil(length)) | 1
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2.0
    for s in np.linspace(-length / 2, length / 2, 4 * size):
        x, y = c + s * np.cos(angle_rad), c + s * np.sin(angle_rad)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                k[y0 + dy, x0 + dx] += w
    return k / k.sum()


def degrade_robot(image: np.ndarray, seed: int, settings: RobotSettings = ROBOT) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` -> robot-protocol RGB ``uint8 [H', 640, 3]`` (deterministic in
    ``seed``). Use :func:`robot_camera` for the matching intrinsics."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    ow, oh = robot_size(w, h, settings)
    img = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_AREA if ow < w else cv2.INTER_LINEAR)
    lin = _srgb_to_linear(img.astype(np.float32) / 255.0)
    if rng.random() < settings.p_dark:
        gain = rng.uniform(*settings.dark_gain)
    else:
        gain = rng.uniform(*settings.bright_gain)
    lin = lin * gain
    length = rng.uniform(*settings.blur_px)
    k = motion_kernel(length, rng.uniform(0, np.pi))
    lin = cv2.filter2D(lin.astype(np.float32), -1, k, borderType=cv2.BORDER_REFLECT)
    lin = np.clip(lin, 0.0, 1.0)
    electrons = rng.poisson(lin * settings.full_well).astype(np.float32) / settings.full_well
    lin = electrons + rng.normal(0.0, settings.read_noise, lin.shape).astype(np.float32)
    out = np.round(_linear_to_srgb(lin) * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(
        ".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
    )
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    assert dec is not None
    return np.ascontiguousarray(dec[:, :, ::-1])


def describe(settings: RobotSettings = ROBOT) -> str:
    """One-line statement of the robot protocol settings (for result tables)."""
    s = settings
    return (
        f"{s.width} px wide; exposure gain {s.dark_gain[0]}-{s.dark_gain[1]} (p={s.p_dark}) or "
        f"{s.bright_gain[0]}-{s.bright_gain[1]} (clipped); motion blur {s.blur_px[0]:g}-{s.blur_px[1]:g} px; "
        f"shot noise (full well {s.full_well:g} e-) + read noise {s.read_noise * 255:g}/255; JPEG q{s.jpeg_quality}"
    )
