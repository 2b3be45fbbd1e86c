# The live runtime's own cost, with no model in the way (the no-op runner).
#
# - overhead: one task at a time, the time from `Coordinator.submit` to the
#   `assign` frame arriving at a worker connection over loopback websockets
#   (p50/p99). The probe worker is a bare websocket client in the same process
#   (same clock), answering each assign with accepted + result.
# - throughput: N tiny tasks through the coordinator and 4 real worker processes
#   (`python -m engine.worker --noop`, 8 slots each), from the first submit to the
#   last completion.
# Baselines, measured in the same run: calling NoopRunner.run directly (the whole
# cost of a task without the network), and, for scale, the demo ONNX model
# generating 16 tokens directly.
from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio_websocket

from engine.core import TaskSpec, TaskState, Usage
from engine.protocol import (
    Accepted, AssignTask, Gpu, Hello, Result, decode, encode, serve_websocket,
)
from engine.runtime import CoordinatorConfig, TaskUpdate, open_coordinator
from engine.worker.runners import NoopRunner, load_runner

from .harness import Benchmark, Row, median_of, percentile

MODEL = "llama2:7b"
WORKERS = 4
SLOTS = 8


async def _text_frame(ws: trio_websocket.WebSocketConnection) -> str:
    """The next frame from the coordinator; the protocol is text, so a binary frame is an error."""
    frame = await ws.get_message()
    if isinstance(frame, bytes):
        raise TypeError("the coordinator sent a binary frame; the protocol is text")
    return frame


def _direct_noop(calls: int) -> float:
    """Seconds per direct NoopRunner.run call."""
    runner = NoopRunner(MODEL)
    start = time.perf_counter()
    for _ in range(calls):
        runner.run({"prompt": "x"}, {}, lambda p: None, lambda: False)
    return (time.perf_counter() - start) / calls


def _direct_demo(runs: int) -> float:
    """Median seconds of 16 tokens from the demo model (its text is not meaningful)."""
    from engine.worker.runners.demo_pack import ensure_demo_pack

    with tempfile.TemporaryDirectory() as tmp:
        runner = load_runner(MODEL, ensure_demo_pack(Path(tmp) / "demo"),
                             providers_preference="cpu")
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.run({"prompt": "hello"}, {"max_tokens": 16, "temperature": 0},
                       lambda p: None, lambda: False)
            samples.append(time.perf_counter() - start)
    return median_of(samples)


async def _overhead(tasks: int) -> list[float]:
    samples: list[float] = []
    config = CoordinatorConfig(heartbeat_timeout=math.inf, keep_finished=False)
    async with open_coordinator(config) as coordinator:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, coordinator, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{server.port}/api/nodes/connect"
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message(encode(Hello("bench", Gpu("RTX 4090", 24.0), (MODEL,), 1)))
                decode(await _text_frame(ws))  # welcome
                usage = Usage(seconds=0.001, tokens=1)
                for i in range(tasks):
                    spec = TaskSpec(f"o{i}", MODEL, prompt_tokens=1, output_tokens=1)
                    start = time.perf_counter()
                    await coordinator.submit(spec, {"prompt": "x"}, {})
                    assign = decode(await _text_frame(ws))
                    samples.append(time.perf_counter() - start)
                    assert isinstance(assign, AssignTask) and assign.task_id == spec.task_id
                    await ws.send_message(encode(Accepted(assign.task_id)))
                    await ws.send_message(encode(Result(assign.task_id, "ok", usage)))
                    await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    return samples


async def _throughput(tasks: int) -> float:
    """Tasks per second through the coordinator and WORKERS no-op worker processes."""
    done = trio.Event()
    completed = 0

    async def on_update(update: TaskUpdate) -> None:
        nonlocal completed
        if update.state is TaskState.COMPLETED:
            completed += 1
            if completed == tasks:
                done.set()

    config = CoordinatorConfig(heartbeat_timeout=60.0, keep_finished=False)
    async with open_coordinator(config, on_update=on_update) as coordinator:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, coordinator, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{server.port}/api/nodes/connect"
            procs = [await trio.lowlevel.open_process(
                [sys.executable, "-m", "engine.worker", "--coordinator", url, "--token", "b",
                 "--noop", "--slots", str(SLOTS), "--name", f"noop-{i}", "--log-level", "ERROR"],
                stdout=subprocess.DEVNULL) for i in range(WORKERS)]
            try:
                with trio.fail_after(60):
                    # The coordinator signals task updates, not joins: poll its snapshot for the workers.
                    while len(coordinator.snapshot().nodes) < WORKERS:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                start = time.perf_counter()
                for i in range(tasks):
                    await coordinator.submit(TaskSpec(f"t{i}", MODEL, output_tokens=1),
                                             {"prompt": "x"}, {})
                with trio.fail_after(300):
                    await done.wait()
                elapsed = time.perf_counter() - start
            finally:
                for proc in procs:
                    proc.terminate()
                with trio.move_on_after(10):
                    for proc in procs:
                        await proc.wait()
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
            nursery.cancel_scope.cancel()
    return tasks / elapsed


def run(quick: bool) -> list[Row]:
    overhead_tasks, throughput_tasks = (500, 4_000) if quick else (5_000, 40_000)
    direct = _direct_noop(20_000)
    samples = trio.run(_overhead, overhead_tasks)
    samples = samples[len(samples) // 10:]  # warm-up
    p50, p99 = median_of(samples), percentile(samples, 99)
    rate = trio.run(_throughput, throughput_tasks)
    demo = _direct_demo(5 if quick else 20)
    return [
        Row("overhead: submit -> assign on the wire",
            {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "tasks": len(samples),
             "direct_noop_us": direct * 1e6, "p50/direct": p50 / direct,
             "p50/demo16": p50 / demo},
            target="< 1 ms p50", met=p50 < 1e-3),
        Row(f"throughput: coordinator + {WORKERS} no-op workers",
            {"tasks_per_s": rate, "tasks": throughput_tasks, "direct_noop_per_s": 1 / direct,
             "direct/network": (1 / direct) / rate},
            target=">= 2,000 tasks/s", met=rate >= 2_000),
        Row("context: demo model, 16 tokens, direct", {"ms": demo * 1e3}),
    ]


BENCHMARK = Benchmark(
    name="runtime",
    description="coordinator overhead per task and tiny-task throughput (no-op runner)",
    run=run,
)
