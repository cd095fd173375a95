"""Map building: triangulation from known poses, points from depth, descriptor fusion, sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nre_localization.datasets import colmap
from nre_localization.datasets.poses import pose_from_qt
from nre_localization.errors import DatasetError, InputError
from nre_localization.maps import builder, triangulation
from nre_localization.maps.format import load_map, save_map

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STRECHA = DATA / "strecha"
STAIRS = DATA / "7scenes_stairs_sample"
needs_strecha = pytest.mark.skipif(
    not STRECHA.is_dir(), reason="../shared/data/strecha not present"
)
needs_stairs = pytest.mark.skipif(
    not STAIRS.is_dir(), reason="../shared/data/7scenes_stairs_sample not present"
)


def test_dlt_and_refinement_recover_points() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 3)) + [0, 0, 5]
    poses = []
    for k in range(3):
        a = 0.1 * (k - 1)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        poses.append(np.repeat(np.c_[R, [0.5 * (k - 1), 0.0, 0.0]][None], len(X), axis=0))
    rays = []
    for p in poses:
        Xc = np.einsum("pij,pj->pi", p[:, :, :3], X) + p[:, :, 3]
        rays.append(Xc[:, :2] / Xc[:, 2:] + rng.normal(0, 1e-4, (len(X), 2)))
    X0 = triangulation.triangulate_dlt(rays, poses)
    X1 = triangulation.refine_points(X0, rays, poses)
    assert np.median(np.linalg.norm(X1 - X, axis=1)) < 0.01

    def residual(P: np.ndarray) -> float:
        r = 0.0
        for x, p in zip(rays, poses, strict=True):
            Xc = np.einsum("pij,pj->pi", p[:, :, :3], P) + p[:, :, 3]
            r += float(((Xc[:, :2] / Xc[:, 2:] - x) ** 2).sum())
        return r

    assert residual(X1) <= residual(X0) * (1 + 1e-9)  # Gauss-Newton lowers the reprojection error


@needs_strecha
def test_triangulation_from_known_poses_and_epipolar_check() -> None:
    scene = colmap.load_colmap_scene(STRECHA / "Herz-Jesus-P8")
    scene.images = scene.images[:4]
    cfg = triangulation.TriangulationConfig(max_features=1500, neighbours=3)
    res = triangulation.triangulate_scene(scene, cfg)
    t = res.tracks
    assert t.n_points > 800
    assert res.n_verified > 0.7 * res.n_matches  # ground-truth poses explain most SIFT matches
    assert np.median(t.error) < 0.6 and t.error.max() <= cfg.max_reproj_px
    # every observation reprojects within the threshold, in front of its camera
    pt = t.point_of_observation()
    for k, im in enumerate(scene.images):
        sel = t.image_index == k
        Xc = t.xyz[pt[sel]] @ im.T_cam_world[:3, :3].T + im.T_cam_world[:3, 3]
        uv, front = scene.camera_of(im).project(Xc)
        assert front.all() and np.abs(uv - t.xy[sel]).max() < cfg.max_reproj_px + 1e-3
    # features know their points (for the classical baseline)
    assert sum(int((f.point_id >= 0).sum()) for f in res.features) == len(t.image_index)
    # a 2-degree error on one pose makes its matches fail the epipolar check
    bad = colmap.load_colmap_scene(STRECHA / "Herz-Jesus-P8")
    bad.images = bad.images[:4]
    a = np.radians(2.0)
    rot = pose_from_qt([np.cos(a / 2), np.sin(a / 2), 0, 0], [0, 0, 0])
    bad.images[1].T_cam_world = rot @ bad.images[1].T_cam_world
    res_bad = triangulation.triangulate_scene(bad, cfg)
    assert res_bad.n_verified < 0.6 * res.n_verified


@needs_stairs
def test_points_from_depth() -> None:
    scene = builder.load_scene(STAIRS, split="train")
    m, stats = builder.build_map(scene, None)
    assert stats.points_from == "depth" and m.n_points > 1500
    lens = m.points.track_lengths()
    assert (lens >= 2).mean() > 0.5  # consecutive frames see the same points
    assert not m.has_descriptors() and m.model_fingerprint == "none"
    # observations are projections of the points
    pt = m.points.point_of_observation()
    cam = m.cameras[1]
    for k in range(m.n_keyframes):
        sel = m.points.image_index == k
        T = m.keyframe_T_cam_world[k]
        uv, _ = cam.project(m.points.xyz[pt[sel]] @ T[:3, :3].T + T[:3, 3])
        assert np.abs(uv - m.points.xy[sel]).max() < 1e-3


@needs_stairs
def test_descriptors_are_fused_observation_samples(tmp_path: Path) -> None:
    from nre_localization.geometry.cells import bilinear_sample, pixel_to_cell
    from nre_localization.model.network import DescriptorNet, ModelConfig

    torch.manual_seed(0)
    net = DescriptorNet(ModelConfig(coarse_dim=32, fine_dim=16, fine_widths=(8, 16, 32, 64))).eval()
    scene = builder.load_scene(STAIRS, split="train")
    scene.images = scene.images[:3]
    m, stats = builder.build_map(
        scene, net, builder.BuildConfig(descriptor_dtype="float32", device="cpu")
    )
    assert m.desc_coarse.shape == (m.n_points, 32) and m.desc_fine.shape == (m.n_points, 16)
    assert m.model_fingerprint == net.fingerprint() and stats.images_per_minute > 0
    assert np.allclose(np.linalg.norm(m.global_desc, axis=1), 1.0, atol=1e-5)
    # norms stay near the model's scale (its inverse temperature); bilinear blending of unit
    # cells can only shorten them
    nf = np.linalg.norm(m.desc_fine, axis=1)
    assert nf.max() <= net.fine_scale * (1 + 1e-5) and np.median(nf) > 0.9 * net.fine_scale
    # a point seen once: its descriptor is the bilinear sample at its observation
    lens = m.points.track_lengths()
    p = int(np.flatnonzero(lens == 1)[0])
    o = int(m.points.offsets[p])
    k, xy = int(m.points.image_index[o]), m.points.xy[o]
    img = scene.images[k].load_rgb(scene.cameras[1])
    with torch.inference_mode():
        out = net(builder.image_to_tensor(img))
    cell = pixel_to_cell(torch.from_numpy(np.asarray([xy], dtype=np.float32)), net.fine_stride)
    ref = bilinear_sample(out["fine"][0], cell)[0].numpy()
    assert np.allclose(m.desc_fine[p], ref, atol=1e-4)
    # a point seen several times: unit mean direction of its samples, rescaled
    p2 = int(np.flatnonzero(lens >= 2)[0])
    sl = slice(int(m.points.offsets[p2]), int(m.points.offsets[p2 + 1]))
    samples = []
    for kk, xy2 in zip(m.points.image_index[sl], m.points.xy[sl], strict=True):
        with torch.inference_mode():
            o2 = net(builder.image_to_tensor(scene.images[int(kk)].load_rgb()))
        c2 = pixel_to_cell(torch.from_numpy(np.asarray([xy2], dtype=np.float32)), net.fine_stride)
        samples.append(bilinear_sample(o2["fine"][0], c2)[0].numpy())
    s = np.stack(samples)
    mean_dir = (s / np.linalg.norm(s, axis=1, keepdims=True)).sum(0)
    expect = mean_dir / np.linalg.norm(mean_dir) * np.linalg.norm(s, axis=1).mean()
    assert np.allclose(m.desc_fine[p2], expect, atol=1e-4)
    save_map(m, tmp_path / "s.nremap")
    assert (
        load_map(tmp_path / "s.nremap", expected_fingerprint=net.fingerprint()).n_points
        == m.n_points
    )


def test_source_detection_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nothing: source not found"):
        builder.detect_source(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="not a COLMAP model, TUM folder"):
        builder.detect_source(tmp_path)


@needs_strecha
def test_colmap_missing_image_and_size_mismatch(tmp_path: Path) -> None:
    src = STRECHA / "Herz-Jesus-P8"
    model = colmap.read_model(src / "sparse")
    (tmp_path / "images").mkdir()
    for im in sorted(model.images.values(), key=lambda i: i.name)[:2]:
        (tmp_path / "images" / im.name).symlink_to(src / "images" / im.name)
    scene = builder.load_scene(src / "sparse", images=tmp_path / "images")
    with pytest.raises(InputError, match=r"0002.jpg: image file not found"):
        builder.build_map(scene, None)
    import cv2

    small = cv2.imread(str(src / "images" / "0000.jpg"))[:700]
    cv2.imwrite(str(tmp_path / "0000.jpg"), small)
    scene = builder.load_scene(src / "sparse", images=tmp_path)
    with pytest.raises(
        InputError, match=r"0000.jpg: image is 1152x700 but its camera says 1152x768"
    ):
        builder.build_map(scene, None)


@needs_stairs
def test_descriptors_of_resized_keyframes_follow_the_pixel_convention() -> None:
    """Keyframes described at half width: a point's descriptor is the sample of the half-size
    image's maps at (x + 0.5) / 2 - 0.5."""
    import cv2

    from nre_localization.geometry.cells import bilinear_sample, pixel_to_cell
    from nre_localization.model.network import DescriptorNet, ModelConfig

    torch.manual_seed(1)
    net = DescriptorNet(ModelConfig(coarse_dim=32, fine_dim=16, fine_widths=(8, 16, 32, 64))).eval()
    scene = builder.load_scene(STAIRS, split="train")
    scene.images = scene.images[:2]
    cfg = builder.BuildConfig(descriptor_dtype="float32", device="cpu", max_image_width=320)
    m, _ = builder.build_map(scene, net, cfg)
    assert m.model["max_image_width"] == 320
    p = int(np.flatnonzero(m.points.track_lengths() == 1)[0])
    o = int(m.points.offsets[p])
    k, xy = int(m.points.image_index[o]), m.points.xy[o]
    small = cv2.resize(scene.images[k].load_rgb(), (320, 240), interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        out = net(builder.image_to_tensor(small))
    half = (xy + 0.5) * 0.5 - 0.5
    cell = pixel_to_cell(torch.from_numpy(np.asarray([half], dtype=np.float32)), net.fine_stride)
    ref = bilinear_sample(out["fine"][0], cell)[0].numpy()
    assert np.allclose(m.desc_fine[p], ref, atol=1e-4)
    # and not the sample at the unscaled position
    cell_bad = pixel_to_cell(
        torch.from_numpy(np.asarray([xy * 0.5], dtype=np.float32)), net.fine_stride
    )
    bad = bilinear_sample(out["fine"][0], cell_bad)[0].numpy()
    assert not np.allclose(m.desc_fine[p], bad, atol=1e-4) or np.allclose(ref, bad, atol=1e-4)
