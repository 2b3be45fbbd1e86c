"""End to end over real sockets on 127.0.0.1: the coordinator's websocket server and
two real worker processes (`python -m engine.worker --demo`) running the ONNX demo
model. NOTE: the demo model's text is not meaningful; the test checks that it is
exactly what the model produces, not what it says."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from engine.core import TaskSpec, TaskState
from engine.protocol import serve_websocket
from engine.runtime import CoordinatorConfig, TaskUpdate, open_coordinator
from engine.worker.runners import load_runner
from engine.worker.runners.demo_pack import ensure_demo_pack

PROMPT = "Explain quantum computing in simple terms"
SHORT = {"max_tokens": 16, "temperature": 0}
LONG = {"max_tokens": 1500, "temperature": 0}  # ~2-3 s of decoding on one CPU core


def reference_text(demo: Path, params: dict) -> str:
    runner = load_runner("llama2:7b", demo, providers_preference="cpu")
    return runner.run({"prompt": PROMPT}, params, lambda p: None, lambda: False).output


async def test_two_worker_processes_serve_the_demo_model_and_survive_a_kill(tmp_path):
    demo = ensure_demo_pack(tmp_path / "demo")
    updates: list[TaskUpdate] = []

    async def on_update(update: TaskUpdate) -> None:
        updates.append(update)

    def of(task_id: str, kind: str) -> list[TaskUpdate]:
        return [u for u in updates if u.task_id == task_id and u.kind == kind]

    def final(task_id: str) -> TaskUpdate | None:
        return next((u for u in of(task_id, "state") if u.state.is_final), None)

    async def until(predicate, what: str, timeout: float = 60.0) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                await trio.sleep(0.02)
            return
        logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in tmp_path.glob("*.log"))
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    config = CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=10.0)
    async with open_coordinator(config, on_update=on_update) as coordinator:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, coordinator, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{server.port}/api/nodes/connect"
            procs: dict[str, trio.Process] = {}
            for name in ("alpha", "beta"):
                log = open(tmp_path / f"{name}.log", "w")
                procs[name] = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "engine.worker", "--coordinator", url,
                     "--token", "dev", "--name", name, "--demo", "--demo-dir", str(demo),
                     "--provider", "cpu", "--drain-grace", "5"],
                    stdout=log, stderr=subprocess.STDOUT)
            try:
                await until(lambda: len(coordinator.snapshot().nodes) == 2, "two workers")
                names = {n.node_id: n.name for n in coordinator.snapshot().nodes}

                # 1. a task through the Python interface returns the model's text
                outcome = await coordinator.submit(
                    TaskSpec("short", "llama2:7b", prompt_tokens=8, output_tokens=16),
                    {"prompt": PROMPT}, SHORT)
                assert outcome.accepted and outcome.state is TaskState.RUNNING
                await until(lambda: final("short"), "the short task")
                done = final("short")
                assert done.state is TaskState.COMPLETED, done
                assert done.result == await trio.to_thread.run_sync(reference_text, demo, SHORT)
                assert done.usage.tokens == 16 and done.finish_reason == "length"

                # 2. SIGKILL the worker running a long task, once it has streamed
                outcome = await coordinator.submit(
                    TaskSpec("long", "llama2:7b", prompt_tokens=8, output_tokens=1500),
                    {"prompt": PROMPT}, LONG)
                victim = names[outcome.node_id]
                await until(lambda: of("long", "progress"), "the first progress frame")
                assert final("long") is None, "the long task ended before the kill"
                procs[victim].kill()
                await until(lambda: final("long"), "the long task to finish elsewhere")
                done = final("long")
                survivor = next(n for n in procs if n != victim)
                assert done.state is TaskState.COMPLETED, done
                assert names[done.node_id] == survivor
                assert done.usage.tokens == 1500 and done.result
                states = [u.state for u in of("long", "state")]
                assert states.count(TaskState.COMPLETED) == 1
                assert TaskState.QUEUED in states[2:]  # re-queued when the victim died
                assert await procs[victim].wait() == -signal.SIGKILL

                # 3. SIGTERM drains the survivor: it leaves cleanly, exit status 0
                procs[survivor].send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    assert await procs[survivor].wait() == 0
                await until(lambda: not coordinator.snapshot().nodes, "the node to leave")
            finally:
                for proc in procs.values():
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            nursery.cancel_scope.cancel()
