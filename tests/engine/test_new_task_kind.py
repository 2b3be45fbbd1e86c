"""The task-kind seam: a fourth kind (text embeddings) added the way the design
document says - one TaskKind row with its model in the catalog, a runner, and its
factory line in the runner registry - and nothing else, runs end to end: the API
validates its own fields (and refuses another kind's), the scheduler prices and
places it by its own work formula, a real worker agent runs it through the registry,
and the stored task carries the runner's output and the kind's reference cost.
The kind is added for the test only (monkeypatched), never kept."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine.core import catalog, kinds
from engine.core.catalog import GPU_CLASSES, MODELS, OPENAI_REFERENCE, ModelSpec
from engine.core.kinds import TASK_KINDS, RequestField, TaskKind
from engine.worker.runners import RUNNER_KINDS, RunResult, load_runner
from tests.api.conftest import agent_worker, running_app, wait_for_status

KIND, MODEL, REFERENCE = "text-embedding", "embed-mini", "text-embedding-3-small"
PRICE_PER_TOKEN = 0.02e-6


def embedding_work(prompt_tokens: int, output_tokens: int, steps: int, audio_seconds: float) -> float:
    return prompt_tokens / 40.0  # one prefill pass


def embedding_cost(ref: Mapping[str, float], prompt_tokens: int, output_tokens: int, steps: int,
                   audio_seconds: float) -> float:
    return prompt_tokens * ref["input_per_token"]


def embed(text: str, dimensions: int) -> list[float]:
    """A real (if simple) embedding: hashed character trigrams, L2-normalised."""
    vector = [0.0] * dimensions
    padded = f"  {text.lower()} "
    for i in range(len(padded) - 2):
        digest = hashlib.blake2b(padded[i:i + 3].encode(), digest_size=8).digest()
        vector[int.from_bytes(digest, "little") % dimensions] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@attrs.define
class EmbeddingRunner:
    model_name: str

    def load(self) -> None:
        return None

    def run(self, inputs: Mapping[str, Any], params: Mapping[str, Any], on_progress: Any,
            should_stop: Any) -> RunResult:
        text = inputs["prompt"]
        tokens = len(text.split())
        return RunResult(output={"embedding": embed(text, params["dimensions"])},
                         usage={"prompt_tokens": tokens, "seconds": 0.01})

    def unload(self) -> None:
        return None


@pytest.fixture
def embedding_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1. the task-kind table and the catalog (the model, its rates, its reference price)
    monkeypatch.setitem(TASK_KINDS, KIND, TaskKind(
        KIND, work_unit="token", runner="embedding",
        fields=(RequestField("dimensions", "integer", 16, 1, 256,
                             description="length of the embedding vector"),),
        usage_fields=("prompt_tokens",), work=embedding_work, reference_cost=embedding_cost))
    monkeypatch.setitem(MODELS, MODEL, ModelSpec(MODEL, KIND, vram_gb=1.0, load_seconds=0.5,
                                                 openai_reference=REFERENCE))
    monkeypatch.setitem(OPENAI_REFERENCE, REFERENCE, {"input_per_token": PRICE_PER_TOKEN})
    for gpu in GPU_CLASSES.values():
        monkeypatch.setitem(gpu.rates, MODEL, 20_000.0)  # type: ignore[index]
    # 2. the runner and its registry line
    monkeypatch.setitem(RUNNER_KINDS, "embedding", lambda name, directory, provider: EmbeddingRunner(name))
    assert catalog.task_kind(KIND) is kinds.TASK_KINDS[KIND]


async def test_a_fourth_task_kind_runs_end_to_end(embedding_kind: None, tmp_path: Path) -> None:
    async with running_app(tmp_path / "api.db") as harness, \
            agent_worker(harness, {MODEL: load_runner(MODEL, None)}):
        refused = await harness.client.post("/api/tasks", json={
            "prompt": "hi", "model": MODEL, "max_tokens": 5})
        assert refused.status_code == 400
        assert "does not apply to embed-mini" in (await refused.get_json())["details"]

        prompt = "the quick brown fox jumps over the lazy dog"
        created = await harness.submit({"prompt": prompt, "model": MODEL, "dimensions": 8})
        task = await wait_for_status(harness, created["task_id"], "completed")
        row = await harness.services.store.get_task(created["task_id"])

    assert task["params"] == {"dimensions": 8}
    assert json.loads(task["result"])["embedding"] == pytest.approx(embed(prompt, 8))
    assert task["cost"] > 0 and task["node"]["gpu"] == "RTX 4090"
    # the reference cost of the measured usage, by the kind's own formula: the
    # runner counted 9 prompt tokens
    assert row is not None and row.openai_cost == pytest.approx(9 * PRICE_PER_TOKEN)
