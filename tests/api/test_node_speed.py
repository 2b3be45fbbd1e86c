"""/api/network/status shows, per node, what its timed runs showed: its measured
speed per model and whether it contradicts the GPU it claims (engine/core/speed.py),
from the coordinator's own scheduler."""
from __future__ import annotations

import math
import random

import pytest

from api.views import node_view, unit_offer
from engine.core import (
    Assign, NodeJoined, NodeSpec, Scheduler, SchedulerConfig, TaskFinished, TaskSpec,
    TaskSubmitted, Usage,
)

SD = "stable-diffusion"


def test_a_node_whose_speed_contradicts_its_claim_is_shown_re_classed():
    s = Scheduler("balanced", rng=random.Random(0), config=SchedulerConfig(
        heartbeat_timeout=math.inf, measured_speed=True, check_hardware=True))
    s.handle(NodeJoined(NodeSpec("n", "H100", 80.0, (SD,), 1, loaded=(SD,))), 0.0)
    view = node_view(s.snapshot().nodes[0], None, "online")
    assert view["measured_speed"] == {} and view["gpu_claim_contradicted"] is False
    # /api/models' price per work unit: its claim's until it has run
    assert unit_offer(s.snapshot().nodes[0], SD) == (4.76 / 3600 / 32.6, "H100")
    (assign,) = [d for d in s.handle(TaskSubmitted(TaskSpec("t", SD, steps=30)), 0.0)
                 if isinstance(d, Assign)]
    s.handle(TaskFinished("t", "n", Usage(2.0, steps=30)), 2.0)  # 15 it/s, not an H100 (32.6)
    view = node_view(s.snapshot().nodes[0], None, "online")
    assert view["gpu"] == "H100" and view["gpu_claim_contradicted"] is True
    speed = view["measured_speed"][SD]
    assert speed["rate"] == 15.0 and speed["unit"] == "steps per second"
    assert speed["gpu_class"] == "RTX 3090" and speed["reclassed"] is True
    assert speed["price_per_hour"] == 0.39
    # and then its measured class's: the matched class's price at its measured speed
    offer, gpu = unit_offer(s.snapshot().nodes[0], SD)
    (measured,) = s.snapshot().nodes[0].measured
    assert gpu == "RTX 3090" and offer == 0.39 / 3600 / measured.quoted_rate
    assert measured.quoted_rate == pytest.approx(15.0, rel=0.05)  # rounded to an eighth-octave
