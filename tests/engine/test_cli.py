"""The `neurogrid` command hands each subcommand to the module that owns it."""
from __future__ import annotations

import importlib

import pytest

from engine import cli


def test_every_subcommand_module_has_a_main_that_takes_argv():
    for name, (module_name, _) in cli.SUBCOMMANDS.items():
        module = importlib.import_module(module_name)  # importing must not run it
        assert callable(module.main), name


def test_sim_subcommand_runs_with_its_own_arguments(capsys):
    assert cli.main(["sim", "--list"]) == 0
    assert "mmc" in capsys.readouterr().out


def test_help_and_unknown_commands(capsys):
    assert cli.main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_worker_subcommand_reports_bad_flags_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["worker", "--slots", "many"])
    assert exit_.value.code == 2
