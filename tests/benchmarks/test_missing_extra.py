"""`python -m benchmarks` without the bench extra says what to install instead of
dying with a raw ModuleNotFoundError."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Run the benchmarks with `simpy` made unimportable (as where it is not installed).
HIDE_SIMPY = """
import sys
sys.modules["simpy"] = None  # import simpy -> ModuleNotFoundError (name 'simpy')
from benchmarks.__main__ import main
sys.exit(main(["--quick", "--only", "sim"]))
"""


def test_a_missing_bench_package_is_named_with_the_install_command() -> None:
    done = subprocess.run([sys.executable, "-c", HIDE_SIMPY], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "'simpy'" in done.stderr and "pip install -e '.[bench]'" in done.stderr
    assert "Traceback" not in done.stderr
