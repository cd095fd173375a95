"""Visual localisation with the Neural Reprojection Error (NRE), packaged for ROS 2.

Every sub-package except :mod:`nre_localization.ros` imports without ``rclpy``, so the engine,
the model and training run on a host that has only PyTorch, NumPy and OpenCV.
See ``docs/architecture.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
