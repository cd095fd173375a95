#!/usr/bin/env python3
"""Image folder + TUM trajectory + camera file -> ROS 2 bag (see nre_localization.ros.bag_tools).

    .venv/bin/python tools/make_bag.py demo_data/tum_fr2_desk --out build/fr2_desk_bag \
        [--exclude demo_data/tum_fr2_desk/map_frames.txt] [--encoding bayer_rggb8] [--storage mcap]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nre_localization.ros.bag_tools import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
