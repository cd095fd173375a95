"""The NRE engine: loss maps, MSAC-P3P, GNC-IRLS, covariance, baselines (pure PyTorch, no ROS).

Entry points: :func:`solve` (NRE), :func:`solve_re` (same solver, one-hot maps) and
:func:`solve_pnp_ransac` (OpenCV PnP-RANSAC on argmax correspondences); inputs and outputs are the
dataclasses of :mod:`nre_localization.engine.types` (docs/architecture.md, "Engine contract").
"""

from __future__ import annotations

from nre_localization.engine.solver import solve, solve_pnp_ransac, solve_re
from nre_localization.engine.types import MapPoints, PoseResult, QueryFeatures, SolverConfig

__all__ = [
    "MapPoints",
    "PoseResult",
    "QueryFeatures",
    "SolverConfig",
    "solve",
    "solve_pnp_ransac",
    "solve_re",
]
