"""Camera models: projection, unprojection and analytic Jacobians (batched torch, any device).

Models and parameter order (COLMAP's names and order; principal point in the OpenCV pixel
convention of docs/architecture.md, i.e. the centre of the top-left pixel is (0, 0)):

- ``PINHOLE``:        ``fx, fy, cx, cy``
- ``SIMPLE_RADIAL``:  ``f, cx, cy, k``
- ``OPENCV``:         ``fx, fy, cx, cy, k1, k2, p1, p2``
- ``OPENCV_FISHEYE``: ``fx, fy, cx, cy, k1, k2, k3, k4`` (equidistant, ``theta_d = theta (1 + k1
  theta^2 + ...)``)

COLMAP files put the top-left pixel centre at (0.5, 0.5): :meth:`Camera.from_colmap` subtracts 0.5
from ``cx, cy`` and :meth:`Camera.colmap_params` adds it back.

Jacobians are ``d pixel / d xi`` (``[..., 2, 6]``) for a LEFT perturbation of the world->camera
pose, ``T_cam_world <- exp(xi) @ T_cam_world`` with ``xi = (v, w)``, evaluated at camera-frame
points ``X``: ``dX = v + w x X``; they include the full distortion model.

A projection is *valid* when the point is in front of the camera (``z > z_min``) and inside the
region where the distortion is monotonic (so points far outside the field of view never fold back
into the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nre_localization.errors import InputError

__all__ = ["CAMERA_MODELS", "Camera"]

CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
}

_Z_MIN = 1e-6  # metres: points closer to the camera plane than this are invalid.


@dataclass(frozen=True)
class Camera:
    """An intrinsic camera: model name, image size (pixels) and parameters (OpenCV pixel centres).

    Immutable and device-free (parameters are Python floats), so the same object serves CPU and
    CUDA tensors and can be baked into CUDA graphs.
    """

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise InputError(
                f"unknown camera model {self.model!r} (expected one of {', '.join(CAMERA_MODELS)})"
            )
        names = CAMERA_MODELS[self.model]
        try:
            params = tuple(float(p) for p in self.params)
        except (TypeError, ValueError) as err:
            raise InputError(f"{self.model} camera parameters must be numbers: {err}") from None
        if len(params) != len(names):
            raise InputError(
                f"{self.model} needs {len(names)} parameters ({', '.join(names)}), got {len(params)}"
            )
        if not all(math.isfinite(p) for p in params):
            raise InputError(f"{self.model} camera has non-finite parameters {params}")
        if int(self.width) != self.width or int(self.height) != self.height:
            raise InputError(f"camera size must be integers, got {self.width}x{self.height}")
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"camera size must be positive, got {self.width}x{self.height}")
        n_focal = 1 if self.model == "SIMPLE_RADIAL" else 2
        if any(p <= 0 for p in params[:n_focal]):
            raise InputError(f"{self.model} camera needs positive focal lengths, got {params}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    # ------------------------------------------------------------------ construction / conversion
    @classmethod
    def from_colmap(
        cls, model: str, width: int, height: int, params: tuple[float, ...] | list[float]
    ) -> Camera:
        """Build from COLMAP parameters (pixel centre (0.5, 0.5)): subtracts 0.5 from ``cx, cy``."""
        if model not in CAMERA_MODELS:
            raise InputError(
                f"unknown camera model {model!r} (expected one of {', '.join(CAMERA_MODELS)})"
            )
        p = [float(x) for x in params]
        i = 1 if model == "SIMPLE_RADIAL" else 2
        if len(p) > i + 1:
            p[i] -= 0.5
            p[i + 1] -= 0.5
        return cls(model, width, height, tuple(p))

    def colmap_params(self) -> tuple[float, ...]:
        """Parameters in COLMAP's convention (adds 0.5 to ``cx, cy``)."""
        p = list(self.params)
        i = self._pp_index
        p[i] += 0.5
        p[i + 1] += 0.5
        return tuple(p)

    @classmethod
    def pinhole(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> Camera:
        """A ``PINHOLE`` camera (principal point in OpenCV pixel convention)."""
        return cls("PINHOLE", width, height, (fx, fy, cx, cy))

    @property
    def _pp_index(self) -> int:
        return 1 if self.model == "SIMPLE_RADIAL" else 2

    @property
    def fx(self) -> float:
        return self.params[0]

    @property
    def fy(self) -> float:
        return self.params[0] if self.model == "SIMPLE_RADIAL" else self.params[1]

    @property
    def cx(self) -> float:
        return self.params[self._pp_index]

    @property
    def cy(self) -> float:
        return self.params[self._pp_index + 1]

    @property
    def distortion(self) -> tuple[float, ...]:
        """Distortion coefficients: ``(k,)``, ``(k1, k2, p1, p2)``, ``(k1..k4)`` or ``()``."""
        return self.params[self._pp_index + 2 :]

    def K(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Intrinsic matrix ``[3, 3]`` (OpenCV pixel convention; distortion not included)."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=dtype,
            device=device,
        )

    def scaled(self, new_width: int, new_height: int) -> Camera:
        """The camera of the image resized to ``new_width x new_height`` (OpenCV convention).

        ``f' = f s``, ``c' = (c + 0.5) s - 0.5`` per axis; distortion coefficients act on normalised
        coordinates and are unchanged. A ``SIMPLE_RADIAL`` camera resized anisotropically becomes
        an ``OPENCV`` camera (``k1 = k``), which represents it exactly.
        """
        if new_width <= 0 or new_height <= 0:
            raise InputError(f"cannot scale a camera to {new_width}x{new_height}")
        sx, sy = new_width / self.width, new_height / self.height
        cx, cy = (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5
        if self.model == "SIMPLE_RADIAL":
            if abs(sx - sy) <= 1e-12:
                return Camera(
                    self.model, new_width, new_height, (self.fx * sx, cx, cy, self.params[3])
                )
            k = self.params[3]
            return Camera(
                "OPENCV",
                new_width,
                new_height,
                (self.fx * sx, self.fy * sy, cx, cy, k, 0.0, 0.0, 0.0),
            )
        return Camera(
            self.model,
            new_width,
            new_height,
            (self.fx * sx, self.fy * sy, cx, cy, *self.distortion),
        )

    def cell_camera(self, stride: float) -> Camera:
        """The camera whose "pixels" are the continuous cell coordinates of a stride-``stride`` map.

        Same convention as :func:`nre_localization.geometry.cells.pixel_to_cell`:
        ``c = (p + 0.5) / stride - 0.5``, i.e. ``f' = f / s`` and ``c' = (c + 0.5) / s - 0.5``.
        """
        s = float(stride)
        if not s > 0:
            raise InputError(f"stride must be positive, got {stride}")
        w, h = max(1, math.ceil(self.width / s)), max(1, math.ceil(self.height / s))
        cx, cy = (self.cx + 0.5) / s - 0.5, (self.cy + 0.5) / s - 0.5
        if self.model == "SIMPLE_RADIAL":
            return Camera(self.model, w, h, (self.fx / s, cx, cy, self.params[3]))
        return Camera(self.model, w, h, (self.fx / s, self.fy / s, cx, cy, *self.distortion))

    # ------------------------------------------------------------------ distortion
    def distort(
        self, xy: torch.Tensor, jacobian: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised undistorted ``xy [..., 2]`` -> ``(xy_d [..., 2], D [..., 2, 2], valid [...])``.

        ``D = d xy_d / d xy`` (an empty tensor when ``jacobian`` is False); ``valid`` is False
        outside the monotonic region of the model.
        """
        x, y = xy[..., 0], xy[..., 1]
        if self.model == "PINHOLE":
            if not jacobian:
                return xy, xy.new_empty(0), torch.ones_like(x, dtype=torch.bool)
            one, zero = torch.ones_like(x), torch.zeros_like(x)
            d = torch.stack([torch.stack([one, zero], -1), torch.stack([zero, one], -1)], -2)
            return xy, d, torch.ones_like(x, dtype=torch.bool)
        if self.model == "OPENCV_FISHEYE":
            return self._distort_fisheye(x, y, jacobian)
        if self.model == "SIMPLE_RADIAL":
            k1, k2, p1, p2 = self.params[3], 0.0, 0.0, 0.0
        else:
            k1, k2, p1, p2 = self.params[4:8]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + k2 * r2)
        dr = k1 + 2.0 * k2 * r2  # d radial / d r2
        xy2 = 2.0 * x * y
        xd = x * radial + p1 * xy2 + p2 * (r2 + 2.0 * x * x)
        yd = y * radial + p1 * (r2 + 2.0 * y * y) + p2 * xy2
        # Monotonic radial part: d(r * radial)/dr = 1 + 3 k1 r^2 + 5 k2 r^4 > 0.
        valid = (1.0 + r2 * (3.0 * k1 + 5.0 * k2 * r2) > 0) & (radial > 0)
        if not jacobian:
            return torch.stack([xd, yd], -1), xy.new_empty(0), valid
        off = xy2 * dr + 2.0 * p1 * x + 2.0 * p2 * y
        d00 = radial + 2.0 * x * x * dr + 2.0 * p1 * y + 6.0 * p2 * x
        d11 = radial + 2.0 * y * y * dr + 6.0 * p1 * y + 2.0 * p2 * x
        d = torch.stack([torch.stack([d00, off], -1), torch.stack([off, d11], -1)], -2)
        return torch.stack([xd, yd], -1), d, valid

    def _distort_fisheye(
        self, x: torch.Tensor, y: torch.Tensor, jacobian: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k1, k2, k3, k4 = self.params[4:8]
        r2 = x * x + y * y
        r = torch.sqrt(r2)
        theta = torch.atan(r)
        t2 = theta * theta
        poly = 1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))  # theta_d / theta
        dthetad = 1.0 + t2 * (3.0 * k1 + t2 * (5.0 * k2 + t2 * (7.0 * k3 + t2 * 9.0 * k4)))
        valid = dthetad > 0
        dpoly_over_t = 2.0 * k1 + t2 * (4.0 * k2 + t2 * (6.0 * k3 + t2 * 8.0 * k4))  # poly' / theta
        # u = theta / tan(theta) = theta / r and u' / theta, by series near 0 (no cancellation).
        small = theta < 0.1
        ts = torch.where(small, torch.ones_like(theta), theta)
        sin_t, cos_t = torch.sin(ts), torch.cos(ts)
        u = torch.where(
            small, 1.0 - t2 / 3.0 - t2 * t2 / 45.0 - 2.0 * t2 * t2 * t2 / 945.0, ts * cos_t / sin_t
        )
        du_over_t = torch.where(
            small,
            -2.0 / 3.0 - 4.0 * t2 / 45.0 - 12.0 * t2 * t2 / 945.0,
            (sin_t * cos_t - ts) / (ts * sin_t * sin_t),
        )
        s = u * poly  # theta_d / r
        if not jacobian:
            return torch.stack([s * x, s * y], -1), x.new_empty(0), valid
        cos2 = 1.0 / (1.0 + r2)  # d theta / d r
        g = cos2 * u * (du_over_t * poly + u * dpoly_over_t)  # (ds/dr) / r
        xd, yd = s * x, s * y
        off = g * x * y
        d = torch.stack(
            [torch.stack([s + g * x * x, off], -1), torch.stack([off, s + g * y * y], -1)], -2
        )
        return torch.stack([xd, yd], -1), d, valid

    def undistort(self, xyd: torch.Tensor, iterations: int = 20) -> torch.Tensor:
        """Normalised distorted ``xy_d [..., 2]`` -> undistorted ``xy [..., 2]`` (Newton, fixed steps)."""
        if self.model == "PINHOLE":
            return xyd
        if self.model == "OPENCV_FISHEYE":
            k1, k2, k3, k4 = self.params[4:8]
            rd = torch.linalg.norm(xyd, dim=-1)
            theta = rd.clone()
            for _ in range(iterations):
                t2 = theta * theta
                f = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - rd
                df = 1.0 + t2 * (3.0 * k1 + t2 * (5.0 * k2 + t2 * (7.0 * k3 + t2 * 9.0 * k4)))
                theta = (theta - f / df).clamp(0.0, math.pi / 2 - 1e-6)
            r = torch.tan(theta)
            small = rd < 1e-12
            ratio = torch.where(small, torch.ones_like(rd), r / torch.where(small, 1.0, rd))
            return xyd * ratio[..., None]
        xy = xyd.clone()
        for _ in range(iterations):
            cur, d, _ = self.distort(xy)
            err = cur - xyd
            det = d[..., 0, 0] * d[..., 1, 1] - d[..., 0, 1] * d[..., 1, 0]
            det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
            dx = (d[..., 1, 1] * err[..., 0] - d[..., 0, 1] * err[..., 1]) / det
            dy = (-d[..., 1, 0] * err[..., 0] + d[..., 0, 0] * err[..., 1]) / det
            xy = xy - torch.stack([dx, dy], -1)
        return xy

    # ------------------------------------------------------------------ projection
    def project(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``X [..., 3]`` (metres) -> ``(pixels [..., 2], valid [...])``.

        Invalid points (behind the camera, outside the distortion's monotonic region) get finite
        but meaningless pixels; callers must use ``valid``.
        """
        z = X[..., 2]
        front = z > _Z_MIN
        zs = torch.where(front, z, 1.0)
        xy = X[..., :2] / zs[..., None]
        if self.model == "PINHOLE":  # no distortion: every point in front is valid
            return self._to_pixels(xy), front
        xyd, _, ok = self.distort(xy, jacobian=False)
        return self._to_pixels(xyd), front & ok

    def project_jacobian(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``X [..., 3]`` -> ``(pixels [..., 2], J [..., 2, 6], valid [...])``.

        ``J = d pixels / d xi`` for ``T_cam_world <- exp(xi) T_cam_world``, ``xi = (v, w)``.
        """
        z = X[..., 2]
        front = z > _Z_MIN
        inv_z = 1.0 / torch.where(front, z, torch.ones_like(z))
        xy = X[..., :2] * inv_z[..., None]
        xyd, d, ok = self.distort(xy)
        pix = self._to_pixels(xyd)
        # d xy / d X = [[1/z, 0, -x/z], [0, 1/z, -y/z]]
        zero = torch.zeros_like(inv_z)
        dn = torch.stack(
            [
                torch.stack([inv_z, zero, -xy[..., 0] * inv_z], -1),
                torch.stack([zero, inv_z, -xy[..., 1] * inv_z], -1),
            ],
            -2,
        )
        df = torch.stack([d[..., 0, :] * self.fx, d[..., 1, :] * self.fy], -2)
        a = df @ dn  # d pixels / d X  [..., 2, 3]
        # a_r . (w x X) = w . (X x a_r)
        jr = torch.linalg.cross(X[..., None, :].expand_as(a), a, dim=-1)
        return pix, torch.cat([a, jr], dim=-1), front & ok

    def _to_pixels(self, xyd: torch.Tensor) -> torch.Tensor:
        """Distorted normalised ``[..., 2]`` -> pixels (no host->device copies: graph-safe)."""
        return torch.stack([xyd[..., 0] * self.fx + self.cx, xyd[..., 1] * self.fy + self.cy], -1)

    def unproject(self, pixels: torch.Tensor, iterations: int = 20) -> torch.Tensor:
        """Pixels ``[..., 2]`` -> rays ``[..., 3]`` in the camera frame with ``z = 1``.

        ``iterations``: Newton steps of the undistortion (models with distortion).
        """
        xyd = torch.stack(
            [(pixels[..., 0] - self.cx) / self.fx, (pixels[..., 1] - self.cy) / self.fy], -1
        )
        xy = self.undistort(xyd, iterations)
        return torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)

    def bearings(self, pixels: torch.Tensor, iterations: int = 20) -> torch.Tensor:
        """Pixels ``[..., 2]`` -> unit bearing vectors ``[..., 3]`` in the camera frame."""
        rays = self.unproject(pixels, iterations)
        return rays / torch.linalg.norm(rays, dim=-1, keepdim=True)

    def project_world(
        self, points_world: torch.Tensor, T_cam_world: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """World points ``[N, 3]`` and pose ``[4, 4]`` -> ``(pixels [N, 2], valid [N])``."""
        T = T_cam_world.to(points_world.dtype)
        X = points_world @ T[:3, :3].T + T[:3, 3]
        return self.project(X)
