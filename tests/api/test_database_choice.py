"""One rule for which database a command uses (--db, NEUROGRID_DB, ./neurogrid.db),
said by every command; the admin commands refuse to start a new database at the
default location unless --create."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from api.admin import main
from api.database import DB_ENV, choose_database


def test_flag_then_environment_then_default(tmp_path: Path) -> None:
    assert choose_database("a.db", {DB_ENV: "b.db"}).url == "a.db"
    assert choose_database(None, {DB_ENV: "b.db"}).source == DB_ENV
    default = choose_database(None, {})
    assert (default.url, default.source) == ("neurogrid.db", "default")
    choice = choose_database(f"sqlite://{tmp_path}/x.db", {})
    assert choice.describe().startswith(f"{tmp_path}/x.db") and not choice.exists()


def test_admin_refuses_a_new_default_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DB_ENV, raising=False)
    assert main(["nodes", "create", "--name", "de"]) == 2
    err = capsys.readouterr().err
    assert f"no database at {tmp_path}/neurogrid.db" in err and "--create" in err
    assert not (tmp_path / "neurogrid.db").exists()
    assert main(["nodes", "create", "--name", "de", "--create"]) == 0
    assert "creating a new, empty database" in capsys.readouterr().err
    assert main(["nodes", "list"]) == 0  # it exists now: used, and said so
    captured = capsys.readouterr()
    assert "node_de" in captured.out
    assert f"database {tmp_path}/neurogrid.db (from default)" in captured.err


def test_admin_uses_the_environment_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    server_db = tmp_path / "server" / "ng.db"
    server_db.parent.mkdir()
    monkeypatch.setenv(DB_ENV, str(server_db))
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "create", "--tier", "beta"]) == 0
    assert f"{server_db} (from {DB_ENV})" in capsys.readouterr().err
    assert server_db.exists() and not (tmp_path / "neurogrid.db").exists()
    assert os.path.getsize(server_db) > 0
