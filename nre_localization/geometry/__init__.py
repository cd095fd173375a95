"""Geometry: pixel/cell conventions, camera models, SE(3)/SO(3), batched P3P (PyTorch, no ROS)."""
