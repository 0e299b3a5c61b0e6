"""The installed package's version, for the health message and the Home Assistant device card.

One place, because a source tree without installed metadata must read "unknown" everywhere alike."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("custom-sensor")
    except metadata.PackageNotFoundError:  # running from a source tree without metadata
        return "unknown"
