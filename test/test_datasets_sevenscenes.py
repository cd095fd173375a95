"""7-Scenes layout: splits, poses (camera->world), 16-bit depth, depth/pose consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nre_localization.datasets import sevenscenes
from nre_localization.datasets.poses import invert_pose
from nre_localization.errors import InputError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STAIRS = DATA / "7scenes_stairs_sample"
pytestmark = pytest.mark.skipif(
    not STAIRS.is_dir(), reason="../shared/data/7scenes_stairs_sample not present"
)


def test_splits_and_poses() -> None:
    train = sevenscenes.load_7scenes_scene(STAIRS, "train")
    test = sevenscenes.load_7scenes_scene(STAIRS, "test")
    allf = sevenscenes.load_7scenes_scene(STAIRS, "all")
    assert {n.split("/")[0] for n in train.names()} == {"seq-02", "seq-03"}
    assert {n.split("/")[0] for n in test.names()} == {"seq-01", "seq-04"}
    assert len(allf.images) == 12 and len(train.images) + len(test.images) == 12
    im = next(i for i in test.images if i.name.startswith("seq-01/frame-000000"))
    T_wc = sevenscenes.read_pose(STAIRS / "seq-01" / "frame-000000.pose.txt")
    assert T_wc[0, 3] == pytest.approx(-1.4903377)
    assert np.allclose(invert_pose(im.T_cam_world), T_wc, atol=1e-12)
    raw = np.loadtxt(STAIRS / "seq-01" / "frame-000000.pose.txt")
    assert np.allclose(T_wc, raw, atol=2e-4)  # the files are orthonormal to ~1e-4 only
    assert im.depth_path is not None and im.load_rgb(test.cameras[1]).shape == (480, 640, 3)


def test_depth_is_metres_with_invalid_zeroed() -> None:
    d = sevenscenes.read_depth(STAIRS / "seq-01" / "frame-000000.depth.png")
    assert d.shape == (480, 640) and d.dtype == np.float32
    valid = d[d > 0]
    assert valid.size > 0.5 * d.size
    assert 0.3 < np.median(valid) < 6.0  # metres, indoor stairs
    assert d.max() < 65.0  # 65535 mm would be an unmasked invalid pixel


def test_depth_agrees_across_frames_of_a_sequence() -> None:
    """Lift frame 0's depth to world, project into frame 2: most pixels must agree with frame 2's
    depth (catches a pose inversion or a wrong depth scale)."""
    cam = sevenscenes.DEPTH_CAMERA
    k, _, _ = cam.opencv()
    seq = STAIRS / "seq-02"
    d0 = sevenscenes.read_depth(seq / "frame-000000.depth.png")
    d2 = sevenscenes.read_depth(seq / "frame-000002.depth.png")
    T0 = sevenscenes.read_pose(seq / "frame-000000.pose.txt")
    T2 = sevenscenes.read_pose(seq / "frame-000002.pose.txt")
    v, u = np.mgrid[0:480:8, 0:640:8]
    z = d0[v, u]
    ok = z > 0
    x = np.stack(
        [(u[ok] - k[0, 2]) / k[0, 0] * z[ok], (v[ok] - k[1, 2]) / k[1, 1] * z[ok], z[ok]], 1
    )
    Xw = x @ T0[:3, :3].T + T0[:3, 3]
    T2_cw = invert_pose(T2)
    Xc = Xw @ T2_cw[:3, :3].T + T2_cw[:3, 3]
    uv, front = cam.project(Xc)
    ij = np.round(uv).astype(int)
    inside = front & (ij[:, 0] >= 0) & (ij[:, 1] >= 0) & (ij[:, 0] < 640) & (ij[:, 1] < 480)
    dz = d2[ij[inside, 1], ij[inside, 0]]
    agree = (dz > 0) & (np.abs(dz - Xc[inside, 2]) < 0.05 * Xc[inside, 2])
    assert inside.sum() > 1000 and agree.mean() > 0.6
    # the same check with the pose NOT inverted fails
    Xc_bad = Xw @ T2[:3, :3].T + T2[:3, 3]
    uvb, fb = cam.project(Xc_bad)
    ijb = np.round(uvb).astype(int)
    ins_b = fb & (ijb[:, 0] >= 0) & (ijb[:, 1] >= 0) & (ijb[:, 0] < 640) & (ijb[:, 1] < 480)
    if ins_b.sum():
        dzb = d2[ijb[ins_b, 1], ijb[ins_b, 0]]
        assert ((dzb > 0) & (np.abs(dzb - Xc_bad[ins_b, 2]) < 0.05 * Xc_bad[ins_b, 2])).mean() < 0.3


def test_malformed_pose_file(tmp_path: Path) -> None:
    (tmp_path / "p.pose.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(InputError, match="p.pose.txt"):
        sevenscenes.read_pose(tmp_path / "p.pose.txt")
