# Simulator speed: simulated tasks per second through the real scheduling core.
#
# What is measured (figures for the README):
# - "large": 10,000 nodes of four GPU classes in three regions, serving all three
#   models (each node every model that fits), a Poisson mix of text (70%), image
#   (20%) and speech (10%) tasks at ~70% load, 1,000,000 tasks (100,000 with
#   --quick), default placement policy. It runs in a child process so that its peak
#   memory (ru_maxrss, the whole interpreter included) is its own. Targets: 1,000,000
#   tasks in under 30 s of wall time on one core, peak memory under 1.5 GB. Its CPU
#   seconds are shown beside the wall time: on a shared machine they are the figure
#   that does not depend on the neighbours.
# - "mmc vs simpy": the same M/M/c model (Poisson arrivals, exponential service of
#   mean 1 s, c identical servers, load 0.8) run by our simulator and by a textbook
#   SimPy model (a Resource of capacity c, one process per customer), same task count,
#   same run, reported as a ratio. The target (>= 5x) is judged at c = 10,000, the
#   size of the large scenario; c = 16 is shown beside it, without a target.
# - "core alone": where a simulated task's time goes. The c = 10,000 model is run
#   once more with its steps recorded, and the recorded events are fed to a fresh
#   Scheduler with nothing around them: microseconds per task in the core itself,
#   and SimPy's microseconds per task (from the row before) over that, the ratio a
#   simulator whose own loop cost nothing would reach. Beside it, what any loop must
#   add per task: building the task and its core events (frozen attrs values) and
#   one push and pop on an event heap of the run's size; their sum with the core is
#   the floor, against the budget that 5x SimPy leaves.
#
# Rules (harness.py): figures and baselines come from the same run; a missed target
# is reported, never raised.
from __future__ import annotations

import gc
import heapq
import json
import math
import random
import resource
import subprocess
import sys
import time
from typing import Callable, Generator

from benchmarks.harness import Benchmark, Row, median_of
from engine.core import Priority, TaskFinished, TaskSpec, TaskSubmitted, Usage
from sim import Scenario, make_scheduler, parse_scenario, run_scenario

GPU_MIX = (("RTX 3090", "eu-west"), ("RTX 4090", "us-east"), ("A100", "eu-west"),
           ("H100", "ap-south"))
LATENCY = {"eu-west": 0.02, "us-east": 0.06, "ap-south": 0.12}
TIME_TARGET_S, MEMORY_TARGET_MB, SIMPY_RATIO_TARGET = 30.0, 1536.0, 5.0


def large_scenario(tasks: int, nodes: int = 10_000, load: float = 0.7) -> Scenario:
    """The large mixed scenario, sized so that about `tasks` tasks arrive."""
    # Mean service seconds per task averaged over the four GPU classes: text, lognormal
    # means 206 output + 413/40 prompt tokens at ~135 tok/s = 1.6 s; image 30 steps at
    # ~29 it/s = 1.0 s; speech 20 s of audio at ~12x real time = 1.7 s.
    mean_service = 0.7 * 1.6 + 0.2 * 1.0 + 0.1 * 1.7
    rate = load * nodes / mean_service
    return parse_scenario({
        "name": "large", "seed": 1, "duration": tasks / rate,
        "nodes": [{"count": nodes // len(GPU_MIX), "gpu": gpu, "region": region}
                  for gpu, region in GPU_MIX],
        "network": {"latency": LATENCY},
        "workload": [
            {"model": "llama2:7b", "arrival": {"process": "poisson", "rate": 0.7 * rate},
             "prompt_tokens": {"dist": "lognormal", "median": 300, "sigma": 0.8},
             "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.8}},
            {"model": "stable-diffusion", "steps": 30,
             "arrival": {"process": "poisson", "rate": 0.2 * rate}},
            {"model": "whisper", "audio_seconds": {"dist": "exponential", "mean": 20.0},
             "arrival": {"process": "poisson", "rate": 0.1 * rate}},
        ],
    }, "benchmarks/sim_speed.py")


def mmc_scenario(tasks: int, servers: int, load: float = 0.8) -> Scenario:
    rate = load * servers
    return parse_scenario({
        "name": "mmc", "seed": 1, "duration": tasks / rate, "service_noise": 0.0,
        "nodes": [{"count": servers, "gpu": "RTX 4090", "models": ["llama2:7b"]}],
        "workload": [{"arrival": {"process": "poisson", "rate": rate},
                      "service_time": {"dist": "exponential", "mean": 1.0}}],
    }, "benchmarks/sim_speed.py")


def simpy_mmc(tasks: int, servers: int, load: float = 0.8, seed: int = 1) -> float:
    """Wall seconds of the textbook SimPy M/M/c model with `tasks` customers."""
    import simpy

    rng = random.Random(seed)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=servers)
    arrival_rate = load * servers

    def customer(env: simpy.Environment) -> Generator[simpy.Event, object, None]:
        with server.request() as request:
            yield request
            yield env.timeout(rng.expovariate(1.0))

    def source(env: simpy.Environment) -> Generator[simpy.Event, object, None]:
        for _ in range(tasks):
            yield env.timeout(rng.expovariate(arrival_rate))
            env.process(customer(env))

    env.process(source(env))
    started = time.perf_counter()
    env.run()
    return time.perf_counter() - started


def child(tasks: int) -> None:
    """Run the large scenario; print its figures as JSON (see `large`)."""
    scenario = large_scenario(tasks)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_scenario(scenario)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall": wall, "cpu": cpu, "completed": result.summary["tasks"]["completed"],
                      "events": result.summary["events"], "peak_mb": rss_kb / 1024.0,
                      "utilization": result.summary["utilization"]["overall"]}))


def large(tasks: int, quick: bool) -> list[Row]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.sim_speed", str(tasks)],
                         capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    rate = figures["completed"] / figures["wall"]
    seconds_for_million = 1_000_000 / rate
    case = f"large: {tasks:,} tasks, 10,000 nodes"
    return [
        Row(case, {"tasks_per_s": rate, "wall_s": figures["wall"], "cpu_s": figures["cpu"],
                   "events": figures["events"], "utilization": figures["utilization"],
                   "projected_1M_s": seconds_for_million},
            target=f"1M tasks < {TIME_TARGET_S:.0f} s wall",
            met=seconds_for_million < TIME_TARGET_S),
        Row(f"{case}: peak memory", {"peak_mb": figures["peak_mb"]},
            target=f"< {MEMORY_TARGET_MB:.0f} MB at 1M tasks",
            met=None if quick else figures["peak_mb"] < MEMORY_TARGET_MB),
    ]


def versus_simpy(tasks: int, servers: int, judged: bool) -> Row:
    result = run_scenario(mmc_scenario(tasks, servers))
    ours = result.summary["tasks"]["completed"] / result.summary["wall_seconds"]
    theirs = tasks / simpy_mmc(tasks, servers)
    return Row(
        f"M/M/c c={servers:,}: ours vs SimPy",
        {"ours_tasks_per_s": ours, "simpy_tasks_per_s": theirs, "ratio": ours / theirs},
        target=f">= {SIMPY_RATIO_TARGET:.0f}x SimPy" if judged else "",
        met=(ours / theirs >= SIMPY_RATIO_TARGET) if judged else None)


def core_alone(tasks: int, servers: int, simpy_us: float) -> Row:
    """Where a simulated task's time goes (see the module comment); `simpy_us` is
    SimPy's seconds a task at this size, from the row measured just before."""
    scenario = mmc_scenario(tasks, servers)
    policy, pricing = scenario.policies[0], scenario.pricings[0]
    log = run_scenario(scenario, record=True).log
    assert log is not None
    in_flight = round(0.8 * servers)  # the event heap's size at load 0.8

    def replay() -> None:
        handle = make_scheduler(scenario, policy, pricing, scenario.seed).handle
        for entry in log:
            handle(entry.event, entry.time)

    def build_events() -> None:  # what the loop must build for each task, at the least
        for i in range(tasks):
            spec = TaskSpec(f"w0.{i}", "llama2:7b", Priority.STANDARD, 0, 256, 0, 0.0,
                            math.inf, 3)
            TaskSubmitted(spec)
            TaskFinished(spec.task_id, "g0n1", Usage(1.0, 256))

    def heap_ops() -> None:  # one push and one pop a task on a heap of in_flight items
        rng = random.Random(1)
        heap = sorted((rng.random(), i, 0, "", 0) for i in range(in_flight))
        for i in range(tasks):
            when = heapq.heappop(heap)[0]
            heapq.heappush(heap, (when + rng.random(), in_flight + i, 0, "", 0))

    def per_task_us(fn: Callable[[], None]) -> float:
        times = []
        gc.disable()  # as the simulator runs (sim/loop.py): no cyclic collector passes
        try:
            for _ in range(3):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
        finally:
            gc.enable()
        return median_of(times) / tasks * 1e6

    core_us, events_us, heap_us = map(per_task_us, (replay, build_events, heap_ops))
    return Row(f"M/M/c c={servers:,}: the core alone (recorded events replayed)",
               {"core_us_per_task": core_us, "simpy_us_per_task": simpy_us,
                "ceiling_ratio": simpy_us / core_us, "events_us_per_task": events_us,
                "heap_us_per_task": heap_us, "floor_us_per_task": core_us + events_us + heap_us,
                "budget_us_at_target": simpy_us / SIMPY_RATIO_TARGET})


def run(quick: bool) -> list[Row]:
    tasks = 100_000 if quick else 1_000_000
    versus = 50_000 if quick else 300_000
    judged = versus_simpy(versus, 10_000, True)
    simpy_us = 1e6 / float(judged.figures["simpy_tasks_per_s"])
    return [*large(tasks, quick), judged, versus_simpy(versus, 16, False),
            core_alone(versus // 3, 10_000, simpy_us)]


BENCHMARK = Benchmark(
    name="sim",
    description="simulated tasks/s through the real core; large fleet and SimPy M/M/c",
    run=run,
)

if __name__ == "__main__":
    child(int(sys.argv[1]))
