"""A delivery failure means the node's connection takes no frames: the task goes back
to the queue without counting as an attempt and lands on another node, and the node
is dropped - never placed on again in a loop (the soak benchmark found a coordinator
spinning 205,739 times on one half-closed session)."""
from __future__ import annotations

from engine.core import (
    Assign, DeliveryFailed, Drop, NodeJoined, NodeSpec, Requeue, Scheduler, TaskSpec,
    TaskSubmitted,
)


def test_a_failed_delivery_requeues_the_task_elsewhere_and_drops_the_node() -> None:
    scheduler = Scheduler("round_robin")
    for node in ("a", "b"):
        scheduler.handle(NodeJoined(NodeSpec(node, "RTX 4090", 24.0, ("llama2:7b",), slots=1)), 0.0)
    first = [d for d in scheduler.handle(TaskSubmitted(TaskSpec("t", "llama2:7b", output_tokens=8)), 1.0)
             if isinstance(d, Assign)]
    assert len(first) == 1
    failed_on = first[0].node_id
    decisions = scheduler.handle(DeliveryFailed("t", failed_on), 1.0)
    assert any(isinstance(d, Requeue) and d.task_id == "t" for d in decisions)
    assert Drop(failed_on, "its connection stopped taking frames") in decisions
    again = [d for d in decisions if isinstance(d, Assign)]
    assert [(d.task_id, d.attempt) for d in again] == [("t", 1)]  # it never ran: still attempt 1
    assert again[0].node_id != failed_on
    assert failed_on not in scheduler.index.nodes
