"""The rendered-scene benchmark (benchmarks/bench_rendered.py) on 2 clean scenes: exact ground
truth from the room generator, NRE must localise at least one of them to a few centimetres."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".traindata"


def _bench():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(
        "bench_rendered", ROOT / "benchmarks" / "bench_rendered.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_rendered"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(
    not (DATA / "photos" / "val").is_dir(), reason="no .traindata (tools/make_training_data.py)"
)
def test_rendered_scenes_nre_localises() -> None:
    bench = _bench()
    args = bench.parse_args(
        ["--scenes", "2", "--protocols", "clean", "--methods", "nre", "--points", "500"]
    )
    doc = bench.run(args)
    rows = [sc["queries"]["clean"]["nre"] for sc in doc["scenes"]]
    assert len(rows) == 2
    for sc in doc["scenes"]:
        # the ground truth is a real relative pose, and the map points lie in front of A
        assert sc["baseline_m"] > 0.01 and sc["n_points"] >= 100
        assert np.isfinite(sc["median_depth_m"]) and sc["median_depth_m"] > 0
    best = min(rows, key=lambda r: r["t_err_raw"])
    assert best["ok"], best["reasons"]
    assert best["t_err"] < 0.05 and best["r_err"] < 1.0, best
    summary = doc["summary"]["all"]["clean/nre"]
    assert summary["n_queries"] == 2 and summary["recall"]["10cm_5deg"] >= 0.5
