"""The worker process: its command line, its one-line errors, hardware detection,
progress merging and the threaded executor (real threads, real time)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import trio

from engine.protocol import serve_websocket
from engine.runtime import NodeIdentity, open_coordinator
from engine.worker import ProgressBuffer, ThreadedExecutor, detect_gpu
from engine.worker.node import Hardware
from engine.worker.runners import NoopRunner, RunResult

WORKER = [sys.executable, "-m", "engine.worker"]


def run_worker(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*WORKER, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    ([], "--coordinator URL is required"),
    (["--coordinator", "http://x/api/nodes/connect", "--token", "t", "--noop"],
     "must be a ws:// or wss:// URL"),
    (["--coordinator", "ws://x/api/nodes/connect", "--noop"], "--token is required"),
    (["--coordinator", "ws://x/api/nodes/connect", "--token", "t", "--noop", "--slots", "0"],
     "must be at least 1"),
    (["--coordinator", "ws://x/api/nodes/connect", "--token", "t", "--model", "llama2"],
     "expected NAME=DIR"),
    (["--coordinator", "ws://x/api/nodes/connect", "--token", "t", "--model", "m=/no/such"],
     "does not exist"),
    (["--coordinator", "ws://x/api/nodes/connect", "--token", "t", "--demo", "--noop"],
     "pick one"),
])
def test_bad_flags_get_one_line_errors(args, message, monkeypatch):
    monkeypatch.delenv("NEUROGRID_COORDINATOR", raising=False)
    monkeypatch.delenv("NEUROGRID_TOKEN", raising=False)
    done = run_worker(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("neurogrid worker:")


def test_unreachable_coordinator_is_one_clear_line():
    done = run_worker("--coordinator", "ws://127.0.0.1:9/api/nodes/connect", "--token", "t",
                      "--noop", "--max-retries", "0")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("neurogrid worker: cannot reach the coordinator at ws://127.0.0.1:9")
    assert "refused" in last.lower()


async def test_refused_token_ends_the_worker_with_the_reason():
    async def verify(token: str) -> NodeIdentity | None:
        return NodeIdentity("node_ok") if token == "good" else None

    async with open_coordinator(verify_token=verify) as coordinator:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, coordinator, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{server.port}/api/nodes/connect"
            with trio.fail_after(30):
                done = await trio.run_process(
                    [*WORKER, "--coordinator", url, "--token", "stolen", "--noop"],
                    check=False, capture_stderr=True)
                wrong_path = await trio.run_process(
                    [*WORKER, "--coordinator", url.replace("/api/nodes/connect", "/x"),
                     "--token", "good", "--noop", "--max-retries", "0"],
                    check=False, capture_stderr=True)
            nursery.cancel_scope.cancel()
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines()[-1] == (
        "neurogrid worker: the coordinator refused this worker: "
        "token refused: unknown or revoked node token")
    assert wrong_path.returncode == 1
    assert "HTTP 404" in wrong_path.stderr.decode().strip().splitlines()[-1]


def test_gpu_detection_reads_nvidia_smi_and_falls_back_to_cpu():
    def fake(output: str):
        def run(cmd, **kwargs):
            assert cmd[0] == "nvidia-smi"
            return subprocess.CompletedProcess(cmd, 0, output, "")
        return run

    assert detect_gpu(fake("NVIDIA GeForce RTX 4090, 24564\n")) == Hardware(
        "NVIDIA GeForce RTX 4090", 24.0)
    assert detect_gpu(fake("NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n")
                      ) == Hardware("NVIDIA H100 80GB HBM3", 79.6)

    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    for run in (missing, fake(""), fake("garbage")):
        hardware = detect_gpu(run)
        assert hardware.gpu == "cpu" and hardware.vram_gb > 0


def test_progress_buffer_merges_pieces_in_order():
    buffer = ProgressBuffer()
    assert buffer.take() is None
    buffer.add({"tokens": ["a"], "index": 0})
    buffer.add({"tokens": ["b", "c"], "index": 2})
    assert buffer.take() == {"tokens": ["a", "b", "c"], "index": 2}
    assert buffer.take() is None


class SlowRunner:
    """Produces a token every 10 ms until told to stop (real threads)."""

    model_name = "slow"

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def run(self, inputs, params, on_progress, should_stop) -> RunResult:
        self.threads.add(threading.current_thread().name)
        for i in range(params.get("tokens", 1000)):
            if should_stop():
                return RunResult("partial", {"tokens": i}, "cancelled")
            on_progress({"tokens": [str(i)]})
            time.sleep(0.01)
        return RunResult("all", {"tokens": params["tokens"]}, "length")


async def test_threaded_executor_runs_off_the_loop_and_stops_on_cancel():
    runner = SlowRunner()
    executor = ThreadedExecutor({"slow": runner, "noop": NoopRunner("noop")}, max_threads=2)
    assert executor.models == ("slow", "noop")
    assert (await executor.run("noop", {}, {}, lambda p: None)).output == NoopRunner.OUTPUT
    buffer = ProgressBuffer()
    result = await executor.run("slow", {}, {"tokens": 3}, buffer.add)
    assert result.output == "all" and buffer.take() == {"tokens": ["0", "1", "2"]}
    assert threading.current_thread().name not in runner.threads
    started = time.monotonic()
    with trio.move_on_after(0.1):
        await executor.run("slow", {}, {"tokens": 10_000}, buffer.add)
    assert time.monotonic() - started < 1.0  # stopped at the next token, not after 100 s
    assert 1 <= len(buffer.take()["tokens"]) < 100
