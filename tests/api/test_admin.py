"""`neurogrid keys ...` and `neurogrid nodes ...` (api.admin.main)."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from api.admin import main
from api.store import open_store


def lookup(db: str, key: str, token: str) -> tuple[object, object]:
    async def find() -> tuple[object, object]:
        async with open_store(db) as store:
            return await store.find_key(key), await store.find_node_token(token)

    return trio.run(find)


def test_keys_and_worker_tokens_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "admin.db")
    assert main(["keys", "create", "--tier", "premium", "--name", "acme", "--db", db]) == 0
    key_line, key = capsys.readouterr().out.splitlines()
    assert "premium: 1000/hour, 50 in flight" in key_line and key.startswith("ng_")
    assert main(["--db", db, "nodes", "create", "--name", "de"]) == 0
    token = capsys.readouterr().out.splitlines()[1]
    record, name = lookup(db, key, token)
    assert record.tier == "premium" and name == "de"

    assert main(["--db", db, "keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert record.id in listing and key not in listing and "active" in listing
    assert main(["--db", db, "keys", "revoke", record.id]) == 0
    assert main(["--db", db, "keys", "revoke", record.id]) == 1
    assert main(["--db", db, "nodes", "revoke", "de"]) == 0
    assert lookup(db, key, token) == (None, None)


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "admin.db")
    for argv in (["keys", "create", "--tier", "gold"], ["nodes", "create", "--name", "Bad Name"],
                 ["keys", "create", "--tier", "beta", "--per-hour", "0"], ["keys"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--db", db] if argv != ["keys"] else argv)
        assert exc.value.code == 2
