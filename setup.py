"""ament_python build script: colcon (``colcon build``) and pip (``pip install -e .``) both run it.

Runtime dependencies are declared in package.xml (rosdep) and pinned in requirements.txt (pip);
``install_requires`` stays minimal, as ROS 2 Python packages do, so colcon never pip-installs.
"""

from __future__ import annotations

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "nre_localization"
SHARE = f"share/{PACKAGE}"


def _files(*patterns: str) -> list[str]:
    """Files (relative to this directory) matching any of ``patterns``, sorted, no duplicates."""
    found: set[str] = set()
    for pattern in patterns:
        found.update(path for path in glob(pattern) if not path.endswith("~"))
    return sorted(found)


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (SHARE, ["package.xml"]),
        (f"{SHARE}/launch", _files("launch/*.py", "launch/*.xml", "launch/*.yaml")),
        (f"{SHARE}/config", _files("config/*.yaml", "config/*.xml")),
        (f"{SHARE}/weights", _files("weights/*.safetensors", "weights/*.md", "weights/*.json")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    author="nre_localization maintainers",
    maintainer="nre_localization maintainers",
    maintainer_email="nre-localization@example.com",
    description="Visual localisation with the Neural Reprojection Error, as a ROS 2 node and CLI.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "nre-localization = nre_localization.cli:main",
            "nre_localization_node = nre_localization.ros.node:main",
        ],
    },
)
