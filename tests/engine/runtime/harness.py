# A live network in one process, for tests in virtual time: a Coordinator, real
# worker agents (engine.worker.agent.Worker) connected over in-memory connections,
# running a simulated executor whose tasks take virtual time, and raw protocol
# clients that send whatever frames a test wants.
from __future__ import annotations

import random
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping

import trio

from engine.core import TaskSpec, TaskState
from engine.protocol import (
    Gpu, Hello, MemoryConnection, Message, decode, encode, memory_connection_pair,
)
from engine.runtime import Coordinator, CoordinatorConfig, TaskUpdate, open_coordinator
from engine.worker import Worker, WorkerConfig
from engine.worker.runners import InvalidTaskInput, RunResult

MODEL = "llama2:7b"
# keep_finished: the tests read ended tasks' records (attempts) through `task()`.
FAST = CoordinatorConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, hello_timeout=2.0,
                         keep_finished=True)


class SimExecutor:
    """Runs a task in virtual time: `params["steps"]` steps (4) of `params["seconds"]`
    (1.0) in total, one progress token a step. params["fail"]: "invalid" raises
    InvalidTaskInput, "crash" raises RuntimeError."""

    def __init__(self, models: tuple[str, ...] = (MODEL,)) -> None:
        self.models = self.loaded = models
        self.started: list[str] = []  # prompts, in start order
        self.cancelled: list[str] = []
        self.finished: list[str] = []

    async def run(self, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any],
                  on_progress: Callable[[dict[str, Any]], None]) -> RunResult:
        prompt = inputs["prompt"]
        self.started.append(prompt)
        steps = params.get("steps", 4)
        step = params.get("seconds", 1.0) / steps
        try:
            for i in range(steps):
                await trio.sleep(step)
                on_progress({"tokens": [f"t{i}"], "index": i})
        except trio.Cancelled:
            self.cancelled.append(prompt)
            raise
        if params.get("fail") == "invalid":
            raise InvalidTaskInput("bad input")
        if params.get("fail") == "crash":
            raise RuntimeError("runner crashed")
        self.finished.append(prompt)
        return RunResult(f"done:{prompt}", {"tokens": steps, "prompt_tokens": 1,
                                            "seconds": step * steps}, "length")


class WorkerHandle:
    def __init__(self, executor: SimExecutor) -> None:
        self.executor = executor
        self.worker: Worker
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.attempts: list[float] = []  # connection attempts, virtual time

    @property
    def node_id(self) -> str:
        return self.worker.node_id

    def kill(self) -> None:
        """Like SIGKILL: the agent stops at once and its connection drops."""
        self.scope.cancel()


class Net:
    def __init__(self, coordinator: Coordinator, nursery: trio.Nursery) -> None:
        self.c = coordinator
        self.nursery = nursery
        self.updates: list[TaskUpdate] = []

    async def on_update(self, update: TaskUpdate) -> None:
        self.updates.append(update)

    # ---- workers -------------------------------------------------------------------

    def connector(self, handle: WorkerHandle, fail_first: int = 0):
        @asynccontextmanager
        async def connect() -> AsyncIterator[MemoryConnection]:
            handle.attempts.append(trio.current_time())
            if len(handle.attempts) <= fail_first:
                raise OSError(111, "Connection refused")
            client, server = memory_connection_pair()
            self.nursery.start_soon(self.c.serve_connection, server)
            try:
                yield client
            finally:
                await client.aclose("worker gone")
        return connect

    def start_worker(self, name: str = "w", slots: int = 1, executor: SimExecutor | None = None,
                     fail_first: int = 0, **config: Any) -> WorkerHandle:
        executor = executor or SimExecutor()
        config.setdefault("backoff_initial", 0.5)
        handle = WorkerHandle(executor)
        handle.worker = worker = Worker(
            WorkerConfig(token=config.pop("token", "tok"), name=name, gpu="RTX 4090",
                         vram_gb=24.0, slots=slots, **config),
            executor, self.connector(handle, fail_first), rng=random.Random(1))

        async def run() -> None:
            with handle.scope:
                try:
                    await worker.run()
                except Exception as exc:  # noqa: BLE001 - a test reads it
                    handle.error = exc
            handle.done.set()

        self.nursery.start_soon(run)
        return handle

    # ---- tasks ---------------------------------------------------------------------

    async def submit(self, task_id: str, seconds: float = 1.0, steps: int = 4,
                     **params: Any):
        spec = TaskSpec(task_id, MODEL, output_tokens=steps,
                        deadline=params.pop("deadline", float("inf")))
        return await self.c.submit(spec, {"prompt": task_id},
                                   {"seconds": seconds, "steps": steps, **params})

    def of(self, task_id: str, kind: str | None = None) -> list[TaskUpdate]:
        return [u for u in self.updates
                if u.task_id == task_id and (kind is None or u.kind == kind)]

    def states(self, task_id: str) -> list[TaskState]:
        return [u.state for u in self.of(task_id, "state")]

    def final(self, task_id: str) -> TaskUpdate | None:
        return next((u for u in self.of(task_id, "state") if u.state.is_final), None)

    async def until(self, predicate: Callable[[], object], timeout: float = 120.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.01)

    async def until_final(self, *task_ids: str) -> None:
        await self.until(lambda: all(self.final(t) is not None for t in task_ids))

    async def until_nodes(self, count: int) -> None:
        await self.until(lambda: len(self.c.snapshot().nodes) == count)


@asynccontextmanager
async def open_net(config: CoordinatorConfig = FAST, **kwargs: Any) -> AsyncIterator[Net]:
    net: Net | None = None

    async def on_update(update: TaskUpdate) -> None:
        await net.on_update(update)

    async with open_coordinator(config, on_update=on_update, **kwargs) as coordinator:
        async with trio.open_nursery() as nursery:
            net = Net(coordinator, nursery)
            yield net
            nursery.cancel_scope.cancel()


class RawClient:
    """A hand-driven worker connection: sends any frame, reads decoded replies."""

    def __init__(self, net: Net) -> None:
        self.conn, server = memory_connection_pair()
        net.nursery.start_soon(net.c.serve_connection, server)

    async def send(self, frame: Message | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else encode(frame))

    async def receive(self, timeout: float = 30.0) -> Message:
        with trio.fail_after(timeout):
            return decode(await self.conn.receive())

    async def hello(self, token: str = "tok", slots: int = 1,
                    models: tuple[str, ...] = (MODEL,)) -> Message:
        await self.send(Hello(token, Gpu("RTX 4090", 24.0), models, slots, name="raw"))
        return await self.receive()
