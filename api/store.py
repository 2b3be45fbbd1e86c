# The store: every byte NeuroGrid keeps, behind one small async interface
# (`Store`, in records.py with the values it passes, all re-exported here), and
# `open_store(url)`, which picks the implementation by the URL's scheme.
#
# Rules:
# - Nothing outside the store's modules knows which database it is. Callers pass
#   and get attrs values (TaskRow, KeyRecord, ...) and wall-clock unix times, and
#   await every call, reads included: a store over the network (PostgreSQL, for
#   several API processes) implements the same protocol.
# - The database is named by a URL. Schemes are a registry (STORE_SCHEMES: name ->
#   opener of the part after "scheme:"); an unknown scheme is an error naming the
#   known ones. A location without a scheme is a path of the default, SQLite:
#
#     sqlite:///var/lib/neurogrid.db   absolute path /var/lib/neurogrid.db (as file:///)
#     sqlite:/var/lib/neurogrid.db     the same
#     sqlite:neurogrid.db              relative to the working directory
#     neurogrid.db, ./data/ng.db       a plain path: SQLite
#
#   `sqlite://HOST/...` (an authority) is refused: a SQLite file has no host.
#   Percent-escapes in a URL's path are decoded; a plain path is taken as it is.
#
#     postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?libpq options]   PostgreSQL
#     postgres://...                                                the same
#
#   The PostgreSQL store (postgres_store.py) needs the `postgres` extra (psycopg);
#   it is imported only when such a URL is opened, so SQLite needs nothing more.
from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import AsyncIterator, Callable
from urllib.parse import unquote

from .records import (
    IDEMPOTENCY_TTL_SECONDS, MAX_BLOB_BYTES, Blob, FAILED_STATES, OPEN_STATES, DuplicateTaskId,
    IdempotencyKeyTaken, IdempotencyRecord, KeyRecord, NodeRecord, NodeTokenRecord, Signup, Stats,
    Store, StoreError, StoreFailed, StoreHealth, StoreUnavailable, TaskChange, TaskRow,
    hash_secret,
)
from .sqlite_store import open_sqlite
from .store_writer import receive_batch

Opener = Callable[[str], AbstractAsyncContextManager[Store]]


def sqlite_location(rest: str) -> str:
    """The file path of a `sqlite:` URL, given what follows the scheme."""
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        if authority:
            raise StoreError(f"sqlite://{rest[2:]}: a SQLite URL names no host; write "
                             "sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH")
        rest = slash + path
    return unquote(rest)


def open_sqlite_url(rest: str) -> AbstractAsyncContextManager[Store]:
    return open_sqlite(sqlite_location(rest))


def open_postgres_url(rest: str) -> AbstractAsyncContextManager[Store]:
    if not rest.startswith("//"):
        raise StoreError(f"postgresql:{rest}: write postgresql://USER@HOST[:PORT]/DATABASE")
    try:  # imported here: psycopg is an optional extra
        from .postgres_store import open_postgres
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("psycopg"):
            raise
        raise StoreError("a postgresql: database needs psycopg: pip install 'neurogrid[postgres]'"
                         ) from exc
    return open_postgres("postgresql:" + rest)


STORE_SCHEMES: dict[str, Opener] = {
    "sqlite": open_sqlite_url, "postgresql": open_postgres_url, "postgres": open_postgres_url,
}
DEFAULT_SCHEME = "sqlite"  # of a location given as a plain path
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: not C:\


def split_url(url: str) -> tuple[str, str]:
    """(scheme, the rest) of a store URL; a plain path is the default scheme's."""
    match = SCHEME.match(url)
    if match is None:
        return DEFAULT_SCHEME, url
    return match.group(1).lower(), url[match.end():]


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    """The store at `url` (see the forms above), open and ready for writes until
    the block ends; on the way out, every queued write is committed."""
    scheme, rest = split_url(url)
    opener = STORE_SCHEMES.get(scheme)
    if opener is None:
        raise StoreError(f"unsupported database URL {url!r}: the scheme {scheme!r} is not "
                         f"one of {', '.join(f'{s}:' for s in sorted(STORE_SCHEMES))} "
                         "(or give a plain path of a SQLite file)")
    async with opener(rest) as store:
        yield store


__all__ = [
    "Blob", "DEFAULT_SCHEME", "DuplicateTaskId", "IDEMPOTENCY_TTL_SECONDS", "IdempotencyKeyTaken",
    "IdempotencyRecord", "MAX_BLOB_BYTES", "FAILED_STATES", "KeyRecord", "NodeRecord",
    "NodeTokenRecord", "OPEN_STATES", "STORE_SCHEMES", "Signup", "Stats", "Store",
    "StoreError", "StoreFailed", "StoreHealth", "StoreUnavailable", "TaskChange", "TaskRow",
    "hash_secret", "open_store", "receive_batch",
    "split_url", "sqlite_location",
]
