"""ROS 2 adapter: node, message conversion, TF, diagnostics, bag tools and replay.

Only :mod:`nre_localization.ros.node` and the live half of :mod:`nre_localization.ros.replay` import
rclpy. :mod:`conversions`, :mod:`tf_buffer`, :mod:`diagnostics`, :mod:`params` and :mod:`bag_tools`
work on duck-typed message objects (rclpy messages or ``rosbags`` dataclasses alike), so offline
replay and the unit tests run without a ROS graph.
"""
