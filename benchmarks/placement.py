# Placement decisions per second, for every registered policy, at 1,000, 10,000
# and 100,000 nodes, beside a naive reference that scans every node.
#
# Method. A mixed fleet (4 GPU classes, 4 regions, 1-4 slots, half warm) is held at
# 50% busy slots. Each step places one text-generation task through the real
# Scheduler (`handle(TaskSubmitted)` -> Assign) and finishes the oldest running task
# (`handle(TaskFinished)` -> Complete), so the fleet stays in steady state.
# "decisions/s" times the placements alone: each is a full `Scheduler.handle` of a
# submission (queue, policy, index update, pricing, timers), not the policy call in
# isolation; "cycles/s" times the whole loop, finishes included. The naive reference picks the
# same kind of node by computing the balanced score of every free eligible node -
# what an unindexed scheduler does - and is timed on the same fleet in the same run.
# Each figure is the median of `repeats` timed blocks. The target: the default
# policy at >= 100,000 decisions/s at 10,000 nodes, and 100,000 nodes no more than
# 2x slower than 1,000.
from __future__ import annotations

import collections
import random
import time

from engine.core import (
    DEFAULT_POLICY, MODELS, POLICIES, NodeJoined, NodeSpec, Priority, Scheduler,
    SchedulerConfig, TaskFinished, TaskSpec, TaskSubmitted, Usage, gpu_rate, work_units,
)
from engine.core.catalog import default_price
from engine.core.placement import VALUE_OF_TIME_PER_HOUR

from .harness import Benchmark, Figure, Row, median_of

GPUS = ("RTX 3090", "RTX 4090", "A100", "H100")
REGIONS = ("eu-west", "us-east", "us-west", "ap-south")
LATENCY = {"eu-west": 0.01, "us-east": 0.04, "us-west": 0.07, "ap-south": 0.12}
LLAMA = "llama2:7b"


def make_fleet(n: int, seed: int) -> list[NodeSpec]:
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        gpu = GPUS[i % len(GPUS)]
        warm = (LLAMA,) if rng.random() < 0.5 else ()
        nodes.append(NodeSpec(f"node{i}", gpu, 80.0 if gpu in ("A100", "H100") else 24.0,
                              (LLAMA, "whisper"), rng.randint(1, 4), None,
                              REGIONS[rng.randrange(len(REGIONS))], warm))
    return nodes


def task_sizes(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(5.0, 0.8))) for _ in range(count)]


class Steady:
    """A scheduler holding a fleet at half its slots busy."""

    def __init__(self, policy: str, nodes: list[NodeSpec], seed: int) -> None:
        self.sched = Scheduler(policy=policy, rng=random.Random(seed),
                               config=SchedulerConfig(heartbeat_timeout=float("inf"),
                                                      region_latency=LATENCY,
                                                      keep_finished=False))
        for node in nodes:
            self.sched.handle(NodeJoined(node), 0.0)
        self.running: collections.deque[tuple[str, str]] = collections.deque()
        self.counter = 0
        half = sum(n.slots for n in nodes) // 2
        for size in task_sizes(half, seed):
            self.place(size)

    def place(self, size: int) -> None:
        self.counter += 1
        task_id = f"t{self.counter}"
        for d in self.sched.handle(TaskSubmitted(TaskSpec(task_id, LLAMA, Priority.STANDARD,
                                                          prompt_tokens=size,
                                                          output_tokens=size)), 0.0):
            node_id = getattr(d, "node_id", None)
            if node_id is not None:
                self.running.append((task_id, node_id))

    def finish_oldest(self) -> None:
        task_id, node_id = self.running.popleft()
        self.sched.handle(TaskFinished(task_id, node_id, Usage(seconds=1.0)), 0.0)


def time_policy(policy: str, nodes: list[NodeSpec], steps: int,
                repeats: int) -> tuple[float, float]:
    """(placements/s, steady-state tasks/s): the first times the submissions alone
    (each one a placement decision), the second the whole submit + finish cycle."""
    steady = Steady(policy, nodes, seed=1)
    sizes = task_sizes(steps, seed=2)
    placements, cycles = [], []
    clock = time.perf_counter
    for _ in range(repeats):
        placing = 0.0
        start = clock()
        for size in sizes:
            t0 = clock()
            steady.place(size)
            placing += clock() - t0
            steady.finish_oldest()
        cycles.append(steps / (clock() - start))
        placements.append(steps / placing)
    return median_of(placements), median_of(cycles)


def naive_balanced(nodes: list[NodeSpec], busy: dict[str, int], size: int) -> str | None:
    """The unindexed way: score every free eligible node."""
    value_of_time = VALUE_OF_TIME_PER_HOUR[Priority.STANDARD] / 3600.0
    work = work_units(LLAMA, size, size, 0, 0)
    best, best_score = None, float("inf")
    for node in nodes:
        if LLAMA not in node.models or busy.get(node.node_id, 0) >= node.slots:
            continue
        seconds = work / gpu_rate(node.gpu, LLAMA)
        cold = 0.0 if LLAMA in node.loaded else MODELS[LLAMA].load_seconds
        score = (default_price(node.gpu) / 3600.0 * seconds
                 + value_of_time * (seconds + cold + LATENCY[node.region]))
        if score < best_score:
            best, best_score = node.node_id, score
    return best


def time_naive(nodes: list[NodeSpec], steps: int, repeats: int) -> float:
    # Half the slots busy, spread evenly (placing them one by one would cost
    # O(nodes^2) with the naive scan).
    busy: dict[str, int] = collections.Counter()
    running: collections.deque[str] = collections.deque()
    for node in nodes:
        for _ in range(node.slots // 2 + (node.slots % 2 if int(node.node_id[4:]) % 2 else 0)):
            busy[node.node_id] += 1
            running.append(node.node_id)
    sizes = task_sizes(steps, seed=2)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for size in sizes:
            node_id = naive_balanced(nodes, busy, size)
            if node_id is None:
                raise RuntimeError("naive_balanced found no free node, but half the slots are kept free")
            busy[node_id] += 1
            running.append(node_id)
            busy[running.popleft()] -= 1
        rates.append(steps / (time.perf_counter() - start))
    return median_of(rates)


def run(quick: bool) -> list[Row]:
    sizes = (1_000, 10_000, 100_000)
    steps = 10_000 if quick else 100_000
    repeats = 3 if quick else 5
    rows = []
    by_policy: dict[str, dict[int, float]] = {}
    fleets = {n: make_fleet(n, seed=n) for n in sizes}
    cycles: dict[str, float] = {}
    for policy in POLICIES:
        timed_ = {n: time_policy(policy, fleets[n], steps, repeats) for n in sizes}
        by_policy[policy] = {n: placed for n, (placed, _) in timed_.items()}
        cycles[policy] = timed_[10_000][1]
    naive = {n: time_naive(fleets[n], max(20, 2_000_000 // n // (10 if quick else 1)), 3)
             for n in sizes}
    for policy, rates in by_policy.items():
        slowdown = rates[1_000] / rates[100_000]
        figures: dict[str, Figure] = {f"{n:,} nodes": rates[n] for n in sizes}
        figures["slowdown 100k/1k"] = slowdown
        figures["x naive @10k"] = rates[10_000] / naive[10_000]
        figures["submit+finish cycles/s @10k"] = cycles[policy]
        if policy == DEFAULT_POLICY:
            met = rates[10_000] >= 100_000 and slowdown <= 2.0
            rows.append(Row(f"{policy} (default) decisions/s", figures,
                            ">= 100,000/s at 10k nodes; 100k nodes <= 2x slower than 1k", met))
        else:
            rows.append(Row(f"{policy} decisions/s", figures))
    naive_figures: dict[str, Figure] = {f"{n:,} nodes": naive[n] for n in sizes}
    rows.append(Row("naive linear scan (balanced) decisions/s", naive_figures))
    return rows


BENCHMARK = Benchmark(
    name="placement",
    description="scheduler placement decisions per second, steady state at 50% busy",
    run=run,
)
