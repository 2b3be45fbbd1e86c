"""The network snapshot a leader coordinator publishes for the API processes
(api/postgres_cluster.py) comes back from its JSON as the same value, nested
values included (a node's measured speeds)."""
from __future__ import annotations

import json

from api.postgres_cluster import snapshot_from_json, snapshot_json
from engine.core import MeasuredSpeed, NetworkSnapshot, NodeSnapshot


def test_a_published_snapshot_reads_back_as_the_same_value() -> None:
    node = NodeSnapshot(
        node_id="n1", name="box", gpu="RTX 4090", region="eu", location="Germany", slots=2,
        running=1, models=("llama2:7b",), loaded=("llama2:7b",), price_per_hour=0.5,
        draining=False, last_seen=12.5, tasks_done=7, reputation=0.8, verified=3,
        quarantined=False, validator=False,
        measured=(MeasuredSpeed(model="llama2:7b", rate=41.5, pace=3.2, gpu="measured",
                                price_per_hour=0.05, quoted_rate=40.0, reclassed=True),))
    snapshot = NetworkSnapshot(nodes=(node,), queued=2, running=1,
                               queued_by_model={"llama2:7b": 2}, nodes_by_model={"llama2:7b": 1},
                               counters={"completed": 7}, utilization=0.5)
    assert snapshot_from_json(json.loads(json.dumps(snapshot_json(snapshot)))) == snapshot
