# The SQL both stores (SQLite, PostgreSQL) share: the task table's columns as the
# store's values name them, and the task totals: one row (`task_totals`) that
# always equals the aggregate over every task, updated by triggers in the
# transaction of the task row. Here: each Stats field's term (a task row's
# contribution) and the SET clauses the triggers run. The expressions are
# portable SQL (CASE, no boolean arithmetic): both databases read them alike.
from __future__ import annotations

import json
import operator
from typing import Any, Callable

import attrs

from .records import TaskChange, TaskRow

# The columns of `tasks` a new row fills (all but `seq`, which the store assigns),
# and those a TaskChange may set.
TASK_COLUMNS = [f.name for f in attrs.fields(TaskRow) if f.name != "seq"]
CHANGE_COLUMNS = [f.name for f in attrs.fields(TaskChange)
                  if f.name not in ("task_id", "status", "at")]
_TASK_FIELDS = operator.attrgetter(*TASK_COLUMNS)  # one C call, not attrs.astuple's loop
_PARAMS_AT = TASK_COLUMNS.index("params")


def task_values(row: TaskRow, params: Callable[[Any], Any] = json.dumps) -> list[Any]:
    """A new row's values in TASK_COLUMNS' order, its params as `params` encodes
    them (JSON text by default; the PostgreSQL driver's Json wrapper)."""
    values = list(_TASK_FIELDS(row))
    values[_PARAMS_AT] = params(values[_PARAMS_AT])
    return values

# One term per Stats field: a task row's contribution, as an SQL expression over
# the row named by the placeholder (NEW, OLD, or the table itself).
TOTAL_TERMS = {
    "total_tasks": "1",
    "completed_tasks": "(CASE WHEN {r}.status = 'completed' THEN 1 ELSE 0 END)",
    "failed_tasks": "(CASE WHEN {r}.status IN ('failed', 'expired') THEN 1 ELSE 0 END)",
    "cancelled_tasks": "(CASE WHEN {r}.status = 'cancelled' THEN 1 ELSE 0 END)",
    "compute_seconds": "(CASE WHEN {r}.status = 'completed' THEN {r}.processing_time ELSE 0 END)",
    "turnaround_seconds": "(CASE WHEN {r}.status = 'completed' "
                          "THEN {r}.completed_at - {r}.created_at ELSE 0 END)",
    "cost": "(CASE WHEN {r}.status = 'completed' THEN {r}.cost ELSE 0 END)",
    "openai_cost": "(CASE WHEN {r}.status = 'completed' THEN {r}.openai_cost ELSE 0 END)",
}
# A task's contribution depends on its status only once it has ended: the update
# trigger fires only when the old or the new status is a final one.
ENDED = "{r}.status NOT IN ('queued', 'running')"
TOTAL_COLUMNS = [*TOTAL_TERMS, "beta_signups"]


def adjust_totals(sign_new: str, sign_old: str) -> str:
    """SET clauses adding NEW's terms and/or subtracting OLD's ('' leaves one out)."""
    clauses = []
    for column, term in TOTAL_TERMS.items():
        parts = [column]
        if sign_new:
            parts.append(f"+ {term.format(r='NEW')}")
        if sign_old:
            parts.append(f"- {term.format(r='OLD')}")
        clauses.append(f"{column} = {' '.join(parts)}")
    return ", ".join(clauses)


# The totals recomputed from the rows: how a migration fills `task_totals` for a
# database that has tasks already, and what the row must always equal.
TOTALS_FROM_TASKS = "SELECT {}, (SELECT COUNT(*) FROM signups) AS beta_signups FROM tasks".format(
    ", ".join(f"COALESCE(SUM({term.format(r='tasks')}), 0) AS {column}"
              for column, term in TOTAL_TERMS.items()))
READ_TOTALS = f"SELECT {', '.join(TOTAL_COLUMNS)} FROM task_totals WHERE id = 1"

__all__ = ["CHANGE_COLUMNS", "ENDED", "READ_TOTALS", "TOTALS_FROM_TASKS", "TOTAL_COLUMNS",
           "TASK_COLUMNS", "TOTAL_TERMS", "adjust_totals", "task_values"]
