# Building model packs into the cache, once, atomically.
#
# Rules:
# - A pack is a directory whose `neurogrid-pack.json` marker names the pack and its
#   builder's version. The marker is written last, so a directory with a current
#   marker is a complete pack.
# - `ensure_pack(directory, builder)` is idempotent and atomic: the pack is written
#   into a temporary sibling directory and renamed into place, so a reader never
#   sees a half-written pack, and two processes building the same pack at once both
#   end with a complete one. It refuses to replace a directory that is not a pack
#   (an operator's own export is never overwritten).
# - Builders are reproducible: same inputs and version give the same files (or, for
#   converters whose serialisation is not byte-stable, the same outputs); bump the
#   version whenever the output would change.
# - Nothing is downloaded: a builder reads weights shipped inside an installed
#   package, or generates them; when the package is missing it raises PackError
#   naming the package to install.
#
# The cache root is $NEUROGRID_CACHE, else $XDG_CACHE_HOME/neurogrid, else
# ~/.cache/neurogrid.
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import attrs

__all__ = ["MARKER", "PackBuilder", "PackError", "cache_root", "ensure_pack", "read_marker"]

MARKER = "neurogrid-pack.json"


class PackError(RuntimeError):
    """A pack cannot be built here (its source package is missing, the target is not a pack)."""


@attrs.frozen
class PackBuilder:
    """How to build one pack: `write(directory)` fills an empty directory with its files."""

    name: str  # e.g. "smollm2-135m-instruct"
    version: int
    write: Callable[[Path], None]
    description: str = ""  # what the weights are, shown to operators and users


def cache_root() -> Path:
    explicit = os.environ.get("NEUROGRID_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "neurogrid"


def read_marker(directory: Path) -> dict[str, object] | None:
    """The pack marker of `directory`, or None when it is not a (complete) pack."""
    try:
        marker = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_current(directory: Path, builder: PackBuilder) -> bool:
    marker = read_marker(directory)
    return marker is not None and marker.get("name") == builder.name and \
        marker.get("version") == builder.version


def _is_replaceable(directory: Path) -> bool:
    return not any(directory.iterdir()) or read_marker(directory) is not None


def ensure_pack(directory: Path, builder: PackBuilder) -> Path:
    """Build `builder`'s pack in `directory` unless a current one is already there."""
    directory = Path(directory)
    if _is_current(directory, builder):
        return directory
    if directory.exists() and not _is_replaceable(directory):
        raise PackError(f"{directory} exists and is not a NeuroGrid pack; refusing to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.building-", dir=directory.parent))
    try:
        builder.write(staging)
        marker = {"name": builder.name, "version": builder.version,
                  "description": builder.description}
        (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n",
                                      encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it owner-only
        if directory.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{directory.name}.stale-", dir=directory.parent))
            directory.rename(stale / directory.name)
            shutil.rmtree(stale)
        try:
            staging.rename(directory)
        except OSError:  # another process won the race; its pack is as good as ours
            if not _is_current(directory, builder):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
