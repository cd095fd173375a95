"""Shared, built-once data for the localiser / node / replay tests (imported by those modules).

The demo map (even frames of ``demo_data/tum_fr2_desk``, triangulated from ground-truth poses,
descriptors from the shipped model) takes seconds to build on a 2-core CPU, so it is built once
per pytest session (``lru_cache``: modules share this module object) and saved once to a
temporary file for the tests that start a node process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "demo_data" / "tum_fr2_desk"


@lru_cache(maxsize=1)
def demo_model() -> Any:
    import torch

    from nre_localization.model.network import load_default_model

    torch.set_num_threads(2)
    return load_default_model("cpu")


@lru_cache(maxsize=1)
def demo_map() -> Any:
    from nre_localization.maps.builder import build_map, load_scene

    scene = load_scene(DATA, exclude=DATA / "query_frames.txt")
    nre_map, _ = build_map(scene, demo_model())
    return nre_map


@lru_cache(maxsize=1)
def demo_map_path() -> Path:
    from nre_localization.maps.format import save_map

    folder = Path(tempfile.mkdtemp(prefix="nre_demo_map_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return save_map(demo_map(), folder / "fr2_desk.nremap")


def query_names() -> list[str]:
    return (DATA / "query_frames.txt").read_text().split()


@lru_cache(maxsize=1)
def demo_queries() -> dict[str, Any]:
    """Odd frames: ``stamps`` (s), raw ``images`` (RGB), ``camera`` (FULL_OPENCV CameraSpec),
    ``T_world_cam`` ground truth ``[N, 4, 4]`` (TUM convention, i.e. ``T_map_cam``)."""
    from nre_localization.datasets.common import read_rgb
    from nre_localization.datasets.tum import (
        associate,
        read_camera_yaml,
        read_image_list,
        read_trajectory,
    )

    names = set(query_names())
    entries = [(s, n) for s, n in read_image_list(DATA / "rgb.txt") if n in names]
    cam = read_camera_yaml(DATA / "camera.yaml")
    stamps = np.array([s for s, _ in entries])
    return {
        "names": [n for _, n in entries],
        "stamps": [float(s) for s in stamps],
        "images": [read_rgb(DATA / n, cam) for _, n in entries],
        "camera": cam,
        "T_world_cam": associate(read_trajectory(DATA / "groundtruth.txt"), stamps),
    }
