"""Project-wide exception types: one-line, actionable messages.

The CLI turns any :class:`NreError` into exit code 2 and a single line on stderr; the ROS node counts
them per kind and reports them on ``/diagnostics`` instead of dying.
"""

from __future__ import annotations


class NreError(Exception):
    """Base class: ``str(err)`` is one line that says what is wrong and what to fix."""


class InputError(NreError):
    """Bad user input: a malformed file, an image that disagrees with its camera, NaN intrinsics."""


class MapError(NreError):
    """A map file that is missing, truncated, of another format version or built by another model."""


class DatasetError(NreError):
    """A dataset folder or bag that lacks what was asked for (topic, stamp, image)."""


class ConfigError(NreError):
    """A configuration value out of range or of the wrong type."""
