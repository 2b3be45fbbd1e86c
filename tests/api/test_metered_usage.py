"""A task's usage is the coordinator's count, and its JSON says so (`metered_by`):
a real worker agent serving the demo pack (its text is not meaningful) announces
the demo weights, whose tokenizer the coordinator has; the same worker announcing
weights unknown here is metered by its own counts, bounded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from engine.core.metering import METERED_BY_COORDINATOR, METERED_BY_NODE
from engine.worker.packs.defaults import DEMO_WEIGHTS
from engine.worker.runners import load_runner
from engine.worker.runners.demo_pack import build_tokenizer, ensure_demo_pack
from tests.api.conftest import agent_worker, running_app, wait_for_status

MODEL = "llama2:7b"


@pytest.fixture(scope="module")
def text_runner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pack = ensure_demo_pack(tmp_path_factory.mktemp("packs") / "demo")
    return load_runner(MODEL, pack, providers_preference="cpu")


@pytest.mark.parametrize("weights, metered_by", [(DEMO_WEIGHTS, METERED_BY_COORDINATOR),
                                                 ("my own export", METERED_BY_NODE)])
async def test_the_task_json_says_who_metered_it(tmp_path: Path, text_runner: Any,
                                                 weights: str, metered_by: str) -> None:
    async with running_app(tmp_path / "api.db") as harness, agent_worker(
            harness, {MODEL: text_runner}, weights={MODEL: weights}):
        task_id = (await harness.submit({"prompt": "the cat", "max_tokens": 12}))["task_id"]
        task = await wait_for_status(harness, task_id, "completed", timeout=60.0)
        row = await harness.services.store.get_task(task_id)
    assert task["metered_by"] == row.metered_by == metered_by
    assert task["model_weights"] == weights
    output = Tokenizer.from_str(build_tokenizer()).encode(task["result"],
                                                          add_special_tokens=False).ids
    generated = task["tokens_used"] - row.prompt_tokens  # tokens_used = output + prompt
    if metered_by == METERED_BY_COORDINATOR:
        assert generated == len(output)  # the coordinator's count of the text
    else:
        assert generated <= 12  # the node's count, held to max_tokens
    assert task["cost"] > 0
