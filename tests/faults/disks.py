"""A database disk that fills up on demand, for the fault tests.

Two kinds, chosen by the test's parameter:
- "tmpfs": a real small filesystem (root may `mount -t tmpfs`); `fill()` writes a
  ballast file until the filesystem is full, `free()` deletes it. SQLite then meets
  a real ENOSPC (SQLITE_FULL) wherever it writes.
- "injected": where mounting is not permitted, the store's write connection is
  wrapped so that, while "full", every statement that writes fails the way SQLite
  fails on a full disk (OperationalError, SQLITE_FULL) - a fault injected at the
  boundary between the store and the database driver.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

TMPFS_BYTES = 8 * 2**20
SQLITE_FULL = 13


def mount_tmpfs(where: Path) -> str | None:
    """Mount a small tmpfs at `where`; None when done, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        return f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}"
    return None


class TmpfsDisk:
    kind = "tmpfs"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ballast = root / "ballast"

    def wrap(self, store: Any) -> None:
        pass  # a real filesystem: nothing to wrap

    def fill(self) -> None:
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (2**16, 512, 1):  # to the last byte
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)


class FullConnection:
    """A sqlite3.Connection whose writing statements fail while `disk.full`."""

    READ_ONLY = ("SELECT", "ROLLBACK", "PRAGMA BUSY_TIMEOUT", "PRAGMA DATABASE_LIST",
                 "PRAGMA USER_VERSION\x00")

    def __init__(self, conn: sqlite3.Connection, disk: InjectedDisk) -> None:
        self._conn, self._disk = conn, disk

    def execute(self, sql: str, *args: Any) -> Any:
        words = " ".join(sql.split()).upper()
        if self._disk.full and not (words.startswith(self.READ_ONLY) or words ==
                                    "PRAGMA USER_VERSION"):
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = SQLITE_FULL  # type: ignore[attr-defined]
            error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
            if self._conn.in_transaction and words == "COMMIT":
                self._conn.execute("ROLLBACK")  # as SQLite does after a failed COMMIT
            raise error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class InjectedDisk:
    kind = "injected"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.full = False

    def wrap(self, store: Any) -> None:
        store.writer.conn = FullConnection(store.writer.conn, self)

    def fill(self) -> None:
        self.full = True

    def free(self) -> None:
        self.full = False


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TmpfsDisk | InjectedDisk]:
    root = tmp_path / "disk"
    if request.param == "injected":
        root.mkdir()
        yield InjectedDisk(root)
        return
    why_not = mount_tmpfs(root)
    if why_not is not None:
        pytest.skip(f"{why_not}; the 'injected' variant covers this test")
    try:
        yield TmpfsDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
