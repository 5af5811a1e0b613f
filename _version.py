"""The installed edgec version, read once from package metadata."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("edgec")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
