"""`neurogrid serve --role`: the roles other than `all` need a PostgreSQL database
and start no local workers, and say so before anything starts; the role is part of
the app's configuration, checked by name."""
from __future__ import annotations

import pytest

from api import ApiConfig
from api.__main__ import main
from api.roles import ROLE_SERVICES, check_role
from api.services import ROLES


@pytest.mark.parametrize("role", ["api", "coordinator"])
def test_a_shared_role_on_sqlite_is_refused_naming_the_flag(role, tmp_path, capsys):
    assert main(["--role", role, "--db", str(tmp_path / "one.db"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"--role {role}" in err and "--db postgresql://" in err
    assert not (tmp_path / "one.db").exists()  # refused before anything opened


def test_a_shared_role_starts_no_local_workers(capsys):
    assert main(["--role", "api", "--db", "postgresql://u@h/db", "--local-workers", "2"]) == 2
    assert "--local-workers" in capsys.readouterr().err


def test_roles_are_checked_by_name():
    assert set(ROLE_SERVICES) == set(ROLES) == {"all", "api", "coordinator"}
    check_role("all", "neurogrid.db")
    check_role("coordinator", "postgresql://u@h/db")
    with pytest.raises(ValueError, match="one of all, api, coordinator"):
        check_role("leader", "postgresql://u@h/db")
    with pytest.raises(ValueError, match="role 'leader'"):
        ApiConfig(role="leader")
