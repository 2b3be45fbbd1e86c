"""The soak benchmark's accounting, at a tiny size: a live server, two no-op
workers, 300 tasks with a worker killed after each 100 completed; every task must
end completed exactly once, and the audit must see the kills (a behaviour test of
the server under worker crashes and of the audit itself, not a timing test). The
pacing bound is set low so that submitters do wait for tasks to end."""
from __future__ import annotations

from benchmarks.soak import SoakConfig, measure, rows


def test_every_task_completes_once_across_worker_kills() -> None:
    config = SoakConfig(tasks=300, kill_every=100, max_outstanding=10)
    report = measure(config)

    assert report.accepted == report.db_rows == 300 and report.errors == {}
    assert report.completed == 300 and report.lost == 0
    # the journal holds exactly one Complete for each accepted task
    assert len(report.completes) == 300
    assert set(report.completes.values()) == {1}
    assert report.ran_twice == 0 and report.reported_twice == 0
    # both kills happened, and the coordinator saw each as a node lost undrained
    assert report.kills == 2 and report.crashes == 2
    assert report.rss_first > 0 and report.rss_end > 0
    # paced: never more outstanding than the bound, plus one request per connection
    assert report.peak_outstanding <= config.max_outstanding + config.connections
    accounting = rows(report)[0]
    assert accounting.met is True and accounting.figures["lost"] == 0
