"""Launch nre_localization_node (ROS 2 Jazzy): `ros2 launch nre_localization localization.launch.py`

Arguments (``ros2 launch nre_localization localization.launch.py --show-args``):

- ``map``: the ``.nremap`` file to localise against (overrides ``map_path`` of the params file).
- ``params_file``: parameters (default: the package's ``config/nre_localization.yaml``).
- ``use_sim_time``: ``true`` when replaying a bag that publishes ``/clock``.
- ``namespace``: namespace of the node and of its relative topics.
- ``image_topic`` / ``camera_info_topic``: the camera topics (remapped onto ``image`` and
  ``camera_info``).
- ``pose_topic``: where ``pose_with_covariance`` goes (``amcl_pose`` makes Nav2's tools, e.g.
  ``nav2_simple_commander``, wait for it as for AMCL).
- ``publish_tf``: ``false`` when robot_localization's map-frame EKF owns ``map -> odom``.
- ``autostart``: ``false`` to leave configure/activate to a lifecycle manager.
- ``log_level``: ``info``, ``debug``, ...

Where ``launch`` is not installed (PyPI-only setups), the same configuration runs as
``nre_localization_node --ros-args --params-file config/nre_localization.yaml -p map_path:=MAP
-r image:=/camera/image_raw -r camera_info:=/camera/camera_info``.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("nre_localization")
    default_params = os.path.join(share, "config", "nre_localization.yaml")

    args = [
        DeclareLaunchArgument("map", description="the .nremap file to localise against"),
        DeclareLaunchArgument(
            "params_file", default_value=default_params, description="node parameters (YAML)"
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="use /clock (bag replay)"
        ),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument(
            "image_topic", default_value="/camera/image_raw", description="sensor_msgs/Image topic"
        ),
        DeclareLaunchArgument(
            "camera_info_topic",
            default_value="/camera/camera_info",
            description="sensor_msgs/CameraInfo topic (same stamps as the images)",
        ),
        DeclareLaunchArgument(
            "pose_topic",
            default_value="pose_with_covariance",
            description="PoseWithCovarianceStamped output (e.g. amcl_pose for Nav2 tools)",
        ),
        DeclareLaunchArgument(
            "publish_tf", default_value="true", description="broadcast map -> odom"
        ),
        DeclareLaunchArgument(
            "autostart", default_value="true", description="configure + activate at start"
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="logging level"),
    ]

    node = Node(
        package="nre_localization",
        executable="nre_localization_node",
        name="nre_localization",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "map_path": LaunchConfiguration("map"),
                "use_sim_time": ParameterValue(
                    LaunchConfiguration("use_sim_time"), value_type=bool
                ),
                "publish_tf": ParameterValue(LaunchConfiguration("publish_tf"), value_type=bool),
                "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
            },
        ],
        remappings=[
            ("image", LaunchConfiguration("image_topic")),
            ("image/compressed", [LaunchConfiguration("image_topic"), "/compressed"]),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
            ("pose_with_covariance", LaunchConfiguration("pose_topic")),
        ],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*args, node])
