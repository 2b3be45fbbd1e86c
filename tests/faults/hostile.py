# Shared pieces of the hostile-worker fault tests: a live coordinator in virtual time
# (tests/engine/runtime/harness.py) with a token verifier that knows named tokens
# and can revoke them, and a hostile worker that speaks the real protocol (the
# codec's frames, or raw text a real encoder would never write) over an in-memory
# connection, scripted by the test.
from __future__ import annotations

import json
import math
from typing import Any

import attrs
import trio

from engine.protocol import (
    Accepted, Gpu, Heartbeat, Hello, Message, decode, encode, memory_connection_pair,
)
from engine.protocol import ConnectionClosed
from engine.runtime import NodeIdentity, TaskUpdate
from tests.engine.runtime.harness import MODEL, Net

INT64_MAX = (1 << 63) - 1


class Tokens:
    """A token store: token `tok-NAME` is node `node_NAME` (as the API names them)."""

    def __init__(self, *names: str) -> None:
        self.names = {f"tok-{name}": name for name in names}
        self.checks = 0

    async def verify(self, token: str) -> NodeIdentity | None:
        self.checks += 1
        name = self.names.get(token)
        return None if name is None else NodeIdentity(f"node_{name}", name)

    def revoke(self, name: str) -> None:
        self.names = {t: n for t, n in self.names.items() if n != name}


class Hostile:
    """One connection of a hostile worker. `frames` collects what the coordinator
    sent, in order; `expect(cls)` waits for the next frame of a type."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.conn, server = memory_connection_pair()
        net.nursery.start_soon(net.c.serve_connection, server)
        self.frames: list[Message] = []
        self.closed = False
        self._read = 0
        self._changed = trio.Event()
        net.nursery.start_soon(self._reader)

    async def _reader(self) -> None:
        try:
            while True:
                self.frames.append(decode(await self.conn.receive()))
                self._changed.set()
        except ConnectionClosed:
            self.closed = True
            self._changed.set()

    async def send(self, frame: Message | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else encode(frame))

    async def hello(self, token: str, slots: int = 1, gpu: str = "RTX 4090",
                    price_per_hour: float | None = None, name: str = "hostile") -> Message:
        await self.send(Hello(token, Gpu(gpu, 80.0 if gpu == "H100" else 24.0), (MODEL,),
                              slots, name=name, price_per_hour=price_per_hour))
        return await self.expect(object)

    async def expect(self, cls: type, timeout: float = 60.0) -> Any:
        """The next frame (after the ones already expected) of type `cls`."""
        with trio.fail_after(timeout):
            while True:
                while self._read < len(self.frames):
                    frame = self.frames[self._read]
                    self._read += 1
                    if isinstance(frame, cls):
                        return frame
                if self.closed:
                    raise AssertionError(f"closed before a {cls.__name__} frame")
                self._changed = trio.Event()
                await self._changed.wait()

    def of_type(self, cls: type) -> list[Any]:
        return [f for f in self.frames if isinstance(f, cls)]

    async def heartbeat_forever(self, running: Any, interval: float = 1.0) -> None:
        """Heartbeat (listing `running()`) until the connection closes."""
        try:
            while True:
                await self.send(Heartbeat(tuple(running())))
                await trio.sleep(interval)
        except ConnectionClosed:
            pass

    async def accept(self, task_id: str) -> None:
        await self.send(Accepted(task_id))

    async def close(self) -> None:
        await self.conn.aclose("hostile worker leaves")


def result_text(task_id: str, output: str = '"ok"', **usage: Any) -> str:
    """A `result` frame as raw text, so that it can say what encode() never would."""
    fields = {"seconds": 0.1, **usage}
    usage_text = ",".join(f'"{k}":{v}' for k, v in fields.items())
    return (f'{{"type":"result","task_id":"{task_id}","output":{output},'
            f'"usage":{{{usage_text}}},"finish_reason":"stop"}}')


def storable(value: Any) -> bool:
    """Whether a value is what a store row and strict JSON can hold: text that is
    valid Unicode, 64-bit integers, finite floats, throughout."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -INT64_MAX - 1 <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(storable(v) for v in value)
    if isinstance(value, dict):
        return all(storable(k) and storable(v) for k, v in value.items())
    if attrs.has(type(value)):
        return all(storable(getattr(value, a.name)) for a in attrs.fields(type(value)))
    return True


def assert_storable(updates: list[TaskUpdate]) -> None:
    for update in updates:
        assert storable(update), update
        json.dumps(attrs.asdict(update), default=str, allow_nan=False)  # finite numbers


async def until_final(net: Net, *task_ids: str, timeout: float) -> None:
    """Net.until_final with a stated bound (virtual seconds)."""
    await net.until(lambda: all(net.final(t) is not None for t in task_ids), timeout)
