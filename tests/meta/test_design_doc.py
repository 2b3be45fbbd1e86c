"""The design document describes what the code has: every task kind with its
request fields, every protocol message type, every placement policy."""
from __future__ import annotations

from pathlib import Path

from engine.core import POLICIES, TASK_KINDS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "DESIGN.md").read_text(encoding="utf-8")


def test_every_task_kind_and_field_is_documented() -> None:
    for kind in TASK_KINDS.values():
        assert f"`{kind.name}`" in DOC
        assert f"`{kind.runner}`" in DOC
        for field in kind.fields:
            assert f"`{field.name}`" in DOC, field.name


def test_every_placement_policy_is_documented() -> None:
    for name in POLICIES:
        assert f"`{name}`" in DOC, name


def test_every_protocol_message_is_documented() -> None:
    for message in ("hello", "heartbeat", "accepted", "progress", "result", "failed",
                    "draining", "welcome", "assign", "cancel", "error"):
        assert f"| `{message}` |" in DOC, message
