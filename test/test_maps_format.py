"""The .nremap format: round trip, atomic write, and one-line errors for bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from nre_localization.datasets.common import CameraSpec, Tracks
from nre_localization.datasets.poses import pose_from_qt
from nre_localization.errors import MapError
from nre_localization.maps import format as fmt
from nre_localization.maps import retrieval


def _map(n: int = 50, k: int = 4, with_desc: bool = True) -> fmt.NreMap:
    rng = np.random.default_rng(0)
    obs = [
        [
            (int(i), float(x), float(y))
            for i, x, y in zip(
                rng.choice(k, 2, replace=False),
                rng.uniform(0, 99, 2),
                rng.uniform(0, 79, 2),
                strict=True,
            )
        ]
        for _ in range(n)
    ]
    tracks = Tracks.from_lists(rng.normal(size=(n, 3)), rng.integers(0, 255, (n, 3)), obs)
    m = fmt.NreMap(
        cameras={
            1: CameraSpec("PINHOLE", 100, 80, (90.0, 91.0, 49.5, 39.5)),
            2: CameraSpec("OPENCV_FISHEYE", 64, 48, (30.0, 30.0, 31.5, 23.5, 0.01, 0.0, 0.0, 0.0)),
        },
        keyframe_names=[f"img/{i}.png" for i in range(k)],
        keyframe_T_cam_world=np.stack([pose_from_qt([1, 0, 0, 0], [i, 0, 0]) for i in range(k)]),
        keyframe_camera_ids=np.array([1, 1, 2, 1], dtype=np.int32)[:k],
        points=tracks,
        desc_coarse=rng.normal(size=(n, 16)).astype(np.float16) if with_desc else None,
        desc_fine=rng.normal(size=(n, 8)).astype(np.float32) if with_desc else None,
        global_desc=rng.normal(size=(k, 16)).astype(np.float32) if with_desc else None,
        model_fingerprint="abcdef0123456789" if with_desc else fmt.NO_MODEL,
        model={"coarse_stride": 16, "fine_stride": 2},
        source="test",
        info={"note": "x"},
    )
    return m


def test_roundtrip_preserves_everything(tmp_path: Path) -> None:
    m = _map()
    p = fmt.save_map(m, tmp_path / "a.nremap")
    assert [x.name for x in tmp_path.iterdir()] == ["a.nremap"]  # no temporary left
    back = fmt.load_map(p, expected_fingerprint="abcdef0123456789", require_descriptors=True)
    assert back.cameras == m.cameras and back.keyframe_names == m.keyframe_names
    assert np.array_equal(back.points.xyz, m.points.xyz) and np.array_equal(
        back.points.offsets, m.points.offsets
    )
    assert np.array_equal(back.points.image_index, m.points.image_index) and np.allclose(
        back.points.xy, m.points.xy
    )
    assert back.desc_coarse.dtype == np.float16 and np.array_equal(back.desc_coarse, m.desc_coarse)
    assert np.array_equal(back.desc_fine, m.desc_fine) and np.array_equal(
        back.global_desc, m.global_desc
    )
    assert np.array_equal(back.keyframe_T_cam_world, m.keyframe_T_cam_world)
    assert back.model == m.model and back.info == m.info and back.has_descriptors()
    meta = fmt.read_header(p)
    assert meta["version"] == fmt.FORMAT_VERSION and meta["n_points"] == 50
    assert np.allclose(meta["bounds"]["min"], m.bounds()[0])


def test_geometry_only_map_is_refused_where_descriptors_are_needed(tmp_path: Path) -> None:
    p = fmt.save_map(_map(with_desc=False), tmp_path / "g.nremap")
    assert not fmt.load_map(p).has_descriptors()
    with pytest.raises(MapError, match="g.nremap: map has no descriptors"):
        fmt.load_map(p, require_descriptors=True)
    with pytest.raises(MapError, match="g.nremap: map has no descriptors"):
        fmt.load_map(p, expected_fingerprint="abcdef0123456789")


def test_fingerprint_mismatch(tmp_path: Path) -> None:
    p = fmt.save_map(_map(), tmp_path / "a.nremap")
    with pytest.raises(
        MapError, match=r"a.nremap: map built with model abcdef0123456789, the loaded model is 999"
    ):
        fmt.load_map(p, expected_fingerprint="999")


@pytest.mark.parametrize("cut", [4, 100, 0.5, -1])
def test_truncated_file(tmp_path: Path, cut: float) -> None:
    p = fmt.save_map(_map(), tmp_path / "a.nremap")
    raw = p.read_bytes()
    n = int(len(raw) * cut) if isinstance(cut, float) else (len(raw) + cut if cut < 0 else cut)
    p.write_bytes(raw[:n])
    with pytest.raises(MapError, match=r"a.nremap: truncated") as e:
        fmt.load_map(p)
    assert "\n" not in str(e.value)


def test_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "img.nremap").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 10)
    with pytest.raises(MapError, match="img.nremap: truncated or not an .nremap file"):
        fmt.load_map(tmp_path / "img.nremap")
    from safetensors.numpy import save

    (tmp_path / "other.safetensors").write_bytes(
        save({"w": np.zeros(3, np.float32)}, metadata={"format": "pt"})
    )
    with pytest.raises(
        MapError, match=r"other.safetensors: not an .nremap file \(no nremap metadata\)"
    ):
        fmt.load_map(tmp_path / "other.safetensors")
    with pytest.raises(MapError, match="missing.nremap: map file not found"):
        fmt.load_map(tmp_path / "missing.nremap")


def test_future_version_is_refused(tmp_path: Path) -> None:
    p = fmt.save_map(_map(), tmp_path / "a.nremap")
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["nremap"])
    meta["version"] = 99
    header["__metadata__"]["nremap"] = json.dumps(meta)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    p.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])
    with pytest.raises(
        MapError, match=r"map format version 99, this build reads version 1; rebuild"
    ):
        fmt.load_map(p)


def test_inconsistent_map_is_not_written(tmp_path: Path) -> None:
    m = _map()
    m.points.offsets = m.points.offsets.copy()
    m.points.offsets[-1] += 1
    with pytest.raises(MapError, match="observation offsets"):
        fmt.save_map(m, tmp_path / "bad.nremap")
    assert not list(tmp_path.iterdir())


def test_retrieval_clusters_and_candidates() -> None:
    # two places: keyframes 0,1 share points; keyframes 2,3 share others; nothing across
    obs = (
        [[(0, 1.0, 1.0), (1, 2.0, 2.0)]] * 30
        + [[(2, 1.0, 1.0), (3, 2.0, 2.0)]] * 25
        + [[(3, 5.0, 5.0)]] * 5
    )
    t = Tracks.from_lists(np.zeros((60, 3)), np.zeros((60, 3)), obs)
    m = _map()
    m.points = t
    g = np.eye(4, 16, dtype=np.float32)
    q = g[2] + 0.5 * g[0]
    idx, scores = retrieval.retrieve(g, q / np.linalg.norm(q), 4)
    assert idx.tolist() == [2, 0, 1, 3] and scores[0] > scores[1] > scores[2]
    clusters = retrieval.covisibility_clusters(m, idx)
    assert [c.tolist() for c in clusters] == [[2, 3], [0, 1]]
    assert [c.tolist() for c in retrieval.covisibility_clusters(m, idx, min_shared=26)] == [
        [2],
        [0, 1],
        [3],
    ]
    cand = retrieval.candidate_points(m, np.array([3]))
    assert cand.tolist() == list(range(30, 60))
    top = retrieval.candidate_points(m, np.array([2, 3]), max_points=25)
    assert top.tolist() == list(range(30, 55))  # seen in both keyframes first
