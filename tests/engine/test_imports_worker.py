"""The worker stands apart from the coordinator: importing it loads the worker
protocol (engine.protocol) and the core's values, never the coordinator side
(engine.runtime) nor the scheduler."""
from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import {modules}
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("engine", "api", "sim")))))
"""


def loaded_by(*modules: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(modules=", ".join(modules))],
                         check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def test_importing_the_worker_loads_no_coordinator_and_no_scheduler():
    loaded = loaded_by("engine.worker", "engine.worker.agent", "engine.worker.__main__")
    assert "engine.worker.agent" in loaded and "engine.protocol" in loaded  # the probe works
    assert [m for m in loaded if m == "engine.runtime" or m.startswith("engine.runtime.")] == []
    assert "engine.core.scheduler" not in loaded
    assert [m for m in loaded if m.startswith(("api", "sim"))] == []


def test_the_protocol_package_loads_only_the_core_values():
    loaded = loaded_by("engine.protocol")
    assert "engine.protocol.codec" in loaded and "engine.protocol.connection" in loaded
    assert not any(m.startswith(("engine.runtime", "engine.worker")) for m in loaded)
    assert "engine.core.scheduler" not in loaded


def test_the_core_package_still_offers_the_scheduler_on_demand():
    out = subprocess.run([sys.executable, "-c",
                          "import sys, engine.core\n"
                          "assert 'engine.core.scheduler' not in sys.modules\n"
                          "from engine.core import Scheduler, SchedulerConfig\n"
                          "print(Scheduler.__module__, 'engine.core.scheduler' in sys.modules)"],
                         check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["engine.core.scheduler", "True"]
