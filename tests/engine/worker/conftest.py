# Fixtures for the worker tests. `smollm2_pack` builds the real SmolLM2-135M-Instruct
# pack once per test run (about 30 s on 2 cores): into $NEUROGRID_CACHE's packs/ when
# that variable is set (a cache shared between runs), else into a session temporary
# directory. Its build time is reported in the terminal summary.
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.worker.packs import PackError, ensure_smollm2_pack, smollm2_gguf_path, smollm2_pack_dir

_BUILD = pytest.StashKey[tuple[Path, float]]()


@pytest.fixture(scope="session")
def smollm2_pack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    try:
        smollm2_gguf_path()
    except PackError as exc:
        pytest.skip(str(exc))
    cached = os.environ.get("NEUROGRID_CACHE")
    directory = smollm2_pack_dir() if cached else tmp_path_factory.mktemp("packs") / "smollm2"
    start = time.perf_counter()
    ensure_smollm2_pack(directory)
    pytestconfig.stash[_BUILD] = (directory, time.perf_counter() - start)
    return directory


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    built = config.stash.get(_BUILD, None)
    if built is not None:
        terminalreporter.write_line(f"smollm2 pack ready in {built[1]:.1f} s at {built[0]}")
