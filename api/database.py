# Which database a command uses: the same rule for `neurogrid serve` and the admin
# commands (`neurogrid keys|nodes ...`), so that a key or worker token created in
# one place is found by the server.
#
# Rules:
# - The database is, in order: the `--db` flag; else the NEUROGRID_DB environment
#   variable; else DEFAULT_DB, `neurogrid.db` in the working directory. Each is a
#   store URL or a SQLite file path (store.open_store).
# - Every command says which file it used (`describe`: the absolute path of a
#   SQLite file, else the URL) and where that choice came from.
# - The admin commands never create a database at the default location (run in
#   another directory, that is a new, empty database the server does not read):
#   they refuse unless `--create`. A database named on purpose (--db or
#   NEUROGRID_DB) is created when missing, and they say so.
from __future__ import annotations

import os
from typing import Mapping

import attrs

from .store import DEFAULT_SCHEME, split_url, sqlite_location

DB_ENV = "NEUROGRID_DB"
DEFAULT_DB = "neurogrid.db"


@attrs.frozen
class DatabaseChoice:
    url: str
    source: str  # "--db", "NEUROGRID_DB" or "default"

    def sqlite_path(self) -> str | None:
        scheme, rest = split_url(self.url)
        if scheme != DEFAULT_SCHEME:
            return None
        return sqlite_location(rest) if self.url.lower().startswith("sqlite:") else rest

    def describe(self) -> str:
        path = self.sqlite_path()
        where = os.path.abspath(path) if path is not None else self.url
        return f"{where} (from {self.source})"

    def exists(self) -> bool:
        """Whether the database is there already (a store other than SQLite: assumed)."""
        path = self.sqlite_path()
        return path is None or os.path.exists(path)


def choose_database(flag: str | None, environ: Mapping[str, str] | None = None) -> DatabaseChoice:
    env = os.environ if environ is None else environ
    if flag:
        return DatabaseChoice(flag, "--db")
    if env.get(DB_ENV):
        return DatabaseChoice(env[DB_ENV], DB_ENV)
    return DatabaseChoice(DEFAULT_DB, "default")


__all__ = ["DB_ENV", "DEFAULT_DB", "DatabaseChoice", "choose_database"]
