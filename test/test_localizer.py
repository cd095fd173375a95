"""The Localizer state machine on real data: map from the even frames of the committed TUM
fr2_desk subset, queries from its odd frames, real network and engine (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _localization_fixtures import demo_map, demo_model, demo_queries

from nre_localization.errors import ConfigError, InputError
from nre_localization.localizer import (
    Localizer,
    LocalizerConfig,
    TrackingState,
    pose_difference,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def setup() -> tuple[object, object, dict]:
    import cv2

    from nre_localization.datasets.common import CameraSpec

    q = demo_queries()
    cam = q["camera"]
    # The TUM camera has k3 != 0 (not an engine model): undistort to its pinhole, as the node does.
    k, d, _ = cam.opencv()
    und = [cv2.undistort(img, k, d) for img in q["images"]]
    pinhole = CameraSpec("PINHOLE", cam.width, cam.height, tuple(cam.params[:4]))
    out = {
        "stamps": q["stamps"],
        "images": und,
        "camera": pinhole,
        "T_cam_world": np.linalg.inv(q["T_world_cam"]),
    }
    return demo_map(), demo_model(), out


def _loc(setup: tuple, **kw: object) -> Localizer:
    nre_map, model, _ = setup
    return Localizer(nre_map, model, LocalizerConfig(**kw), "cpu")  # type: ignore[arg-type]


def test_global_then_tracking_is_accurate(setup: tuple) -> None:
    _, _, q = setup
    loc = _loc(setup)
    assert loc.state == TrackingState.GLOBAL
    good = 0
    paths = []
    for i, (s, img) in enumerate(zip(q["stamps"], q["images"], strict=True)):
        # Odometry: the true camera motion (a perfect odometry frame = world).
        res = loc.process(img, q["camera"], s, T_odom_cam=np.linalg.inv(q["T_cam_world"][i]))
        paths.append(res.path)
        assert {"network", "select", "solve", "total"} <= set(res.timings)
        if not res.reliable:
            assert res.T_cam_world is None and res.covariance is None and res.reason
            continue
        assert res.state == TrackingState.TRACKING
        dt, dr = pose_difference(res.T_cam_world, q["T_cam_world"][i])
        good += dt < 0.10 and dr < 5.0
        cov = res.covariance
        assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov)[0] > 0
    n = len(q["stamps"])
    assert good >= 0.7 * n, f"{good}/{n} within 10 cm / 5 deg"
    assert paths[0] == "global"
    assert paths[1:].count("tracking") >= n // 2, paths


def test_noise_goes_lost_without_poses_then_recovers(setup: tuple) -> None:
    _, _, q = setup
    loc = _loc(setup, lost_after=2)
    res = loc.process(q["images"][0], q["camera"], q["stamps"][0])
    assert res.reliable, res.reason
    rng = np.random.default_rng(1)
    states = []
    for k in range(3):
        noise = rng.integers(0, 256, q["images"][0].shape, dtype=np.uint8)
        r = loc.process(noise, q["camera"], q["stamps"][0] + 0.1 * (k + 1))
        assert not r.reliable and r.T_cam_world is None and r.covariance is None
        states.append(r.state)
    assert states[:2] == [TrackingState.TRACKING, TrackingState.LOST]
    assert states[2] == TrackingState.LOST
    r = loc.process(q["images"][1], q["camera"], q["stamps"][1] + 1.0)
    assert r.path == "global"
    assert r.reliable and r.state == TrackingState.TRACKING, r.reason


def test_prior_and_gap_choose_the_path(setup: tuple) -> None:
    _, _, q = setup
    loc = _loc(setup, tracking_max_gap=0.5)
    # An external prior (as from /initialpose) makes the first frame a tracking solve.
    r = loc.process(q["images"][2], q["camera"], q["stamps"][2], prior=q["T_cam_world"][2])
    assert r.path == "tracking" and r.reliable, r.reason
    # Without odometry, a last pose older than tracking_max_gap is not used as a prior.
    r = loc.process(q["images"][3], q["camera"], q["stamps"][3] + 5.0)
    assert r.path == "global"
    loc.request_global()
    assert loc.state == TrackingState.GLOBAL


def test_bad_inputs_raise_input_error(setup: tuple) -> None:
    _, _, q = setup
    loc = _loc(setup)
    img = q["images"][0]
    with pytest.raises(InputError):
        loc.process(img[:, :, 0], q["camera"], 0.0)
    with pytest.raises(InputError):
        loc.process(img.astype(np.float32), q["camera"], 0.0)
    with pytest.raises(InputError):
        loc.process(img[:240], q["camera"], 0.0)
    with pytest.raises(InputError):
        loc.set_prior(np.full((4, 4), np.nan))
    with pytest.raises(ConfigError):
        LocalizerConfig(lost_after=0)


def test_pose_difference() -> None:
    a = np.eye(4)
    b = np.eye(4)
    b[:3, 3] = [0.3, 0.4, 0.0]  # camera centre moves by -R^T t
    c, ang = pose_difference(a, b)
    assert c == pytest.approx(0.5) and ang == pytest.approx(0.0)
    r = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    b = np.eye(4)
    b[:3, :3] = r
    assert pose_difference(a, b)[1] == pytest.approx(90.0)


def test_images_of_nothing_or_elsewhere_are_declined(setup: tuple) -> None:
    """A blank image, smoothed noise and real photos of another place (Strecha buildings, when
    ../shared/data is present) give no pose, whatever the engine's own verdict."""
    import cv2

    _, _, q = setup
    loc = _loc(setup)
    rng = np.random.default_rng(2)
    imgs = [
        np.full((480, 640, 3), 40, np.uint8),
        cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3),
    ]
    strecha = ROOT / ".." / "shared" / "data" / "strecha"
    for p in sorted(strecha.glob("*/images/0003.jpg"))[:2]:
        bgr = cv2.resize(cv2.imread(str(p)), (640, 480), interpolation=cv2.INTER_AREA)
        imgs.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    for k, img in enumerate(imgs):
        r = loc.process(img, q["camera"], 100.0 + k)
        assert not r.reliable and r.T_cam_world is None, (k, r.reason)
        assert r.state == TrackingState.GLOBAL


def test_global_frames_run_the_ambiguity_check(setup: tuple) -> None:
    """Global frames go through the engine's consensus of 4 MSAC seeds (the first frame's global
    solve reports the seeds' spread, tiny on this unambiguous scene); 1 turns it off; tracking
    frames are not affected."""
    _, _, q = setup
    loc = _loc(setup)
    assert loc.solver_config.consensus_seeds == 4
    assert _loc(setup, global_consensus_seeds=1).solver_config.consensus_seeds == 1
    from nre_localization.engine import solver as S

    seen: list[object] = []
    real = S._consensus

    def spy(runs, config):  # noqa: ANN001, ANN202
        out = real(runs, config)
        seen.append((len(runs), out.consensus_spread))
        return out

    S._consensus = spy  # type: ignore[assignment]
    try:
        odo = [np.linalg.inv(q["T_cam_world"][i]) for i in (0, 1)]  # perfect odometry
        first = loc.process(q["images"][0], q["camera"], q["stamps"][0], T_odom_cam=odo[0])
        second = loc.process(q["images"][1], q["camera"], q["stamps"][1], T_odom_cam=odo[1])
    finally:
        S._consensus = real  # type: ignore[assignment]
    assert first.path == "global" and first.reliable, first.reason
    assert second.path == "tracking"
    assert len(seen) == 1 and seen[0][0] == 4, seen  # the global frame only
    spread = seen[0][1]
    assert spread is not None and spread[0] < 0.02 and spread[1] < 2.0, spread
