"""Node parameters: the YAML lists every one, validation gives one clear line per bad value,
and the launch file declares the documented arguments (no DDS, no launch install needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from nre_localization.errors import ConfigError
from nre_localization.ros.params import PARAMS, defaults, validate

ROOT = Path(__file__).parents[1]


def _yaml_params() -> dict:
    data = yaml.safe_load((ROOT / "config" / "nre_localization.yaml").read_text())
    assert list(data) == ["/**"]
    return data["/**"]["ros__parameters"]


def test_yaml_lists_every_parameter_with_its_default() -> None:
    params = _yaml_params()
    assert set(params) == {p.name for p in PARAMS}
    for p in PARAMS:
        assert params[p.name] == p.default, p.name
        assert type(params[p.name]) is p.kind, p.name
    # Valid once a map is named.
    v = validate({**params, "map_path": "/tmp/x.nremap"})
    assert v.global_frame_id == "map" and v.transform_tolerance == 1.0


@pytest.mark.parametrize(
    "name, value, needle",
    [
        ("map_path", "", "map_path is empty"),
        ("device", "gpu0", "device='gpu0'"),
        ("transform_tolerance", -1.0, "transform_tolerance=-1.0 is out of range"),
        ("transform_tolerance", "1", "must be a number"),
        ("transform_tolerance", float("nan"), "must be finite"),
        ("lost_after", 0, "lost_after=0 is out of range"),
        ("lost_after", 2.5, "must be an integer"),
        ("publish_tf", "yes", "must be true or false"),
        ("image_transport", "theora", "must be one of raw, compressed"),
        ("odom_frame_id", "map", "must differ"),
        ("base_frame_id", "", "non-empty frame name"),
        ("no_such_param", 1, "unknown parameter(s): no_such_param"),
    ],
)
def test_bad_values_fail_with_one_line(name: str, value: object, needle: str) -> None:
    values = {"map_path": "/tmp/x.nremap", name: value}
    with pytest.raises(ConfigError) as e:
        validate(values)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_integers_written_as_floats_are_accepted() -> None:
    v = validate({"map_path": "m", "lost_after": 4.0, "transform_tolerance": 2})
    assert v.lost_after == 4 and isinstance(v.lost_after, int)
    assert v.transform_tolerance == 2.0 and isinstance(v.transform_tolerance, float)
    assert defaults()["publish_tf"] is True


def test_launch_file_declares_documented_arguments() -> None:
    """The launch file is standard ROS 2 Python (not runnable here: `launch` is not on PyPI);
    check its structure: it parses, declares the documented arguments, starts our executable."""
    src = (ROOT / "launch" / "localization.launch.py").read_text()
    tree = ast.parse(src)
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "DeclareLaunchArgument"
        and isinstance(node.args[0], ast.Constant)
    }
    assert {"map", "params_file", "use_sim_time", "namespace"} <= declared
    doc = ast.get_docstring(tree) or ""
    for arg in declared:
        assert f"``{arg}``" in doc, f"launch argument {arg} is not documented"
    assert "generate_launch_description" in {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef)
    }
    assert 'executable="nre_localization_node"' in src
    setup = (ROOT / "setup.py").read_text()
    assert "nre_localization_node = nre_localization.ros.node:main" in setup
