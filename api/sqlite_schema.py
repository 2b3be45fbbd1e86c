# The SQLite store's schema: tables, the triggers that keep the task totals, the
# connection settings, and the conversions between rows and the store's values.
#
# Rules:
# - `task_totals` is one row that always equals the aggregate over `tasks` (the
#   query in TOTALS_FROM_TASKS; the terms, shared with PostgreSQL, are in
#   store_sql.py): triggers update it in the same transaction as the task row,
#   so `stats()` reads one row instead of scanning every task, and every writer
#   (another process, an operator's sqlite3 shell) keeps it right.
#   A trigger, not an UPDATE issued by the store, because it runs inside SQLite
#   (no extra statement through Python per write) and because no writer can
#   forget it. `beta_signups` is kept the same way.
# - A task's contribution to the totals depends on its status only when it has
#   ended, so the update trigger fires only when the old or the new status is a
#   final one: queued <-> running moves cost nothing extra.
# - Schema changes are migrations keyed by `PRAGMA user_version`; `prepare`
#   applies the missing ones in one write transaction, so two processes opening
#   the same file at once cannot both apply them. Version 2 added the totals;
#   version 3 the result's content type, the weights that ran, why generation
#   ended and the prompt's share of the tokens (finish_reason, prompt_tokens), task files
#   (`task_blobs`: input audio, output images) and clients' idempotency keys
#   (`idempotency_keys`, written in the same transaction as the task they created);
#   version 4 the verification asked for and its outcome (`verify`, `verification`:
#   JSON text), engine/core/verification.py, and who metered a task (`metered_by`,
#   engine/core/metering.py).
from __future__ import annotations

import functools
import json
import operator
import sqlite3
from itertools import compress, repeat
from typing import Any

import attrs

from .records import KeyRecord, TaskRow
from .store_sql import (
    CHANGE_COLUMNS, ENDED, READ_TOTALS, TOTALS_FROM_TASKS, TOTAL_COLUMNS, TOTAL_TERMS, TASK_COLUMNS,
    adjust_totals,
)

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 5000  # how long a connection waits for another process's lock

TABLES = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    priority TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    estimated_cost REAL NOT NULL,
    estimated_seconds REAL NOT NULL,
    openai_cost REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    node_id TEXT,
    node_location TEXT,
    node_gpu TEXT,
    result TEXT,
    error TEXT,
    cost REAL NOT NULL DEFAULT 0,
    tokens_used INTEGER NOT NULL DEFAULT 0,
    processing_time REAL NOT NULL DEFAULT 0,
    content_type TEXT,
    model_weights TEXT
);
CREATE TABLE IF NOT EXISTS task_blobs (
    task_id TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (task_id, name)
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, seq);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (status) WHERE status IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL,
    name TEXT NOT NULL,
    per_hour INTEGER,
    in_flight INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS node_tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    gpu TEXT NOT NULL,
    location TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    tasks_processed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS signups (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS service_runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    last_alive REAL NOT NULL
);
"""

TOTAL_COLUMN_TYPES = ", ".join(
    f"{column} {'INTEGER' if column.endswith('tasks') else 'REAL'} NOT NULL DEFAULT 0"
    for column in TOTAL_TERMS)
TOTALS = f"""
CREATE TABLE IF NOT EXISTS task_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    {TOTAL_COLUMN_TYPES},
    beta_signups INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS task_totals_insert AFTER INSERT ON tasks BEGIN
    UPDATE task_totals SET {adjust_totals('+', '')} WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS task_totals_update AFTER UPDATE ON tasks
WHEN {ENDED.format(r='OLD')} OR {ENDED.format(r='NEW')} BEGIN
    UPDATE task_totals SET {adjust_totals('+', '-')} WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS task_totals_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_totals SET {adjust_totals('', '-')} WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS signup_totals_insert AFTER INSERT ON signups BEGIN
    UPDATE task_totals SET beta_signups = beta_signups + 1 WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS signup_totals_delete AFTER DELETE ON signups BEGIN
    UPDATE task_totals SET beta_signups = beta_signups - 1 WHERE id = 1;
END;
"""


# Columns added since version 2: column -> its type. A database that lacks one
# (made before it, or a fresh one: the added ones are not in TABLES) gains it.
ADDED_COLUMNS = {"content_type": "TEXT", "model_weights": "TEXT", "finish_reason": "TEXT",
                 "prompt_tokens": "INTEGER NOT NULL DEFAULT 0",
                 "verify": "TEXT NOT NULL DEFAULT 'none'", "verification": "TEXT",
                 "metered_by": "TEXT"}


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def prepare(conn: sqlite3.Connection) -> None:
    """Create or migrate the schema to SCHEMA_VERSION, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"the database is at schema version {version}; this NeuroGrid knows up "
                f"to {SCHEMA_VERSION}: upgrade NeuroGrid")
        for statement in split_script(TABLES + TOTALS):
            conn.execute(statement)
        columns = {r["name"] for r in conn.execute("PRAGMA table_info(tasks)")}
        for column, sql_type in ADDED_COLUMNS.items():
            if column not in columns:
                conn.execute(f"ALTER TABLE tasks ADD COLUMN {column} {sql_type}")
        if conn.execute("SELECT 1 FROM task_totals WHERE id = 1").fetchone() is None:
            conn.execute(f"INSERT INTO task_totals (id, {', '.join(TOTAL_COLUMNS)}) "
                         f"SELECT 1, * FROM ({TOTALS_FROM_TASKS})")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def split_script(script: str) -> list[str]:
    """The statements of a script (trigger bodies kept whole)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    assert not current.strip(), f"incomplete statement: {current!r}"
    return statements


def row_values(row: sqlite3.Row) -> dict[str, Any]:
    """A row as {column: value}. Not `dict(row)`: that looks every column up by
    name, and sqlite3.Row finds a name by a case-insensitive scan of the columns,
    so it costs O(columns^2); timed (timeit, CPython 3.11, 2026-12-03) on a row of
    the task table's 29 columns: 9.5 us against 2.1 us for this one pass. Every row
    the store turns into a record goes through here."""
    return dict(zip(row.keys(), row))


def task_row(row: sqlite3.Row) -> TaskRow:
    values = row_values(row)
    values["params"] = json.loads(values["params"])
    return TaskRow(**values)


def key_record(row: sqlite3.Row) -> KeyRecord:
    values = row_values(row)
    del values["hash"]
    return KeyRecord(**values)


def task_insert(values: list[Any]) -> tuple[str, list[Any]]:
    """The INSERT of a new task row and its parameters, from its values in
    TASK_COLUMNS' order. It leaves out the nullable columns whose value is None
    (NULL is their default): CPython 3.11's sqlite3 adapts every bound None through
    the adaptation protocol, whose failed attribute lookup on the protocol type
    builds an AttributeError (3,400 instructions a parameter, measured; a new task
    has 12), where a column left out costs nothing. A None for a NOT NULL column
    is still bound, and refused by the table as before."""
    filled = tuple(map(operator.or_, map(operator.is_not, values, repeat(None)), _REQUIRED))
    return _insert_of(filled), list(compress(values, filled))


# Per column of TASK_COLUMNS: True where the table refuses NULL (the TaskRow
# fields without a None default; tests/api/test_sqlite_store.py checks the table).
_REQUIRED = tuple(attrs.fields_dict(TaskRow)[column].default is not None
                  for column in TASK_COLUMNS)


@functools.lru_cache(maxsize=64)
def _insert_of(filled: tuple[bool, ...]) -> str:
    columns = list(compress(TASK_COLUMNS, filled))
    return f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


__all__ = [
    "BUSY_TIMEOUT_MS", "CHANGE_COLUMNS", "READ_TOTALS", "SCHEMA_VERSION",
    "TASK_COLUMNS", "TOTALS_FROM_TASKS", "TOTAL_COLUMNS", "connect", "key_record", "prepare",
    "row_values", "split_script", "task_insert", "task_row",
]
