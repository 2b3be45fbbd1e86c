"""NodeTasks, a node's task bookkeeping on the coordinator side: what its
connection holds, and what a heartbeat says about it (pure: no trio)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.runtime import NodeTasks


def everywhere(task_id: str) -> bool:
    return True


def nowhere(task_id: str) -> bool:
    return False


def test_a_task_is_held_from_assign_until_reported():
    tasks = NodeTasks()
    assert not tasks.holds("t") and len(tasks) == 0
    tasks.assigned("t")
    assert tasks.holds("t") and "t" in tasks and not tasks.accepted("t")
    assert tasks.accept("t") and tasks.accepted("t")
    assert tasks.report("t")
    assert not tasks.holds("t") and not tasks.accepted("t") and len(tasks) == 0
    assert not tasks.report("t")  # a second report: not ours any more


def test_frames_about_tasks_not_held_are_refused():
    tasks = NodeTasks()
    assert not tasks.accept("stranger") and not tasks.accepted("stranger")
    assert not tasks.report("stranger")
    assert not tasks.holds("stranger")


def test_an_accepted_task_missing_from_a_heartbeat_is_lost():
    tasks = NodeTasks()
    for t in ("b", "a", "c"):
        tasks.assigned(t)
        tasks.accept(t)
    assert tasks.lost(["c"], everywhere) == ("a", "b")  # sorted
    assert not tasks.holds("a") and not tasks.holds("b") and tasks.holds("c")
    assert tasks.lost(["c"], everywhere) == ()  # lost once


def test_a_task_not_yet_accepted_is_kept_its_assign_may_be_in_flight():
    tasks = NodeTasks()
    tasks.assigned("new")
    assert tasks.lost([], everywhere) == ()
    assert tasks.holds("new")
    tasks.accept("new")
    assert tasks.lost([], everywhere) == ("new",)


def test_a_missing_task_the_scheduler_moved_on_is_forgotten_not_lost():
    tasks = NodeTasks()
    for t in ("expired", "running"):
        tasks.assigned(t)
        tasks.accept(t)
    asked = []

    def still_here(task_id: str) -> bool:
        asked.append(task_id)
        return task_id != "expired"

    assert tasks.lost(["running"], still_here) == ()
    assert asked == ["expired"]  # asked only about the missing ones
    assert not tasks.holds("expired") and tasks.holds("running")
    assert tasks.lost([], nowhere) == () and len(tasks) == 0


def test_strangers_are_the_listed_tasks_not_held():
    tasks = NodeTasks()
    tasks.assigned("mine")
    assert tasks.strangers(["zz", "mine", "aa"]) == ("aa", "zz")
    assert tasks.strangers([]) == ()
    assert tasks.holds("mine")  # asking changes nothing


@given(assigned=st.sets(st.sampled_from("abcdefgh")),
       accepted=st.sets(st.sampled_from("abcdefgh")),
       running=st.sets(st.sampled_from("abcdefgh")),
       here=st.sets(st.sampled_from("abcdefgh")))
def test_a_heartbeat_partitions_the_held_tasks(assigned, accepted, running, here):
    tasks = NodeTasks()
    for t in assigned:
        tasks.assigned(t)
    confirmed = {t for t in accepted if tasks.accept(t)}
    assert confirmed == accepted & assigned
    strangers = tasks.strangers(running)
    lost = tasks.lost(running, here.__contains__)
    missing = assigned - running
    assert set(lost) == missing & here & confirmed and list(lost) == sorted(lost)
    kept = {t for t in assigned if tasks.holds(t)}
    # held: what the worker still lists, and unconfirmed tasks the node still runs
    assert kept == (assigned & running) | (missing & here - confirmed)
    assert set(strangers) == running - assigned
