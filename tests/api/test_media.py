"""Image results end to end: a real worker agent runs the Stable Diffusion runner on
the tiny random-weight pack; the task's result is the URL of its PNG, served with
the task's access rules; the task names the weights that ran (a stand-in says so);
a node's fake image is refused."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Mapping

import attrs
import pytest
from PIL import Image

from api.media import MediaError, image_result
from engine.worker.packs.sd_tiny import ensure_sd_tiny
from engine.worker.runners import RunResult, load_runner
from tests.api.conftest import agent_worker, running_app, wait_for_status

WEIGHTS = "sd-tiny-random: random weights, NOT a real model (stand-in for stable-diffusion)"


@pytest.fixture(scope="module")
def sd_runner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pack = ensure_sd_tiny(tmp_path_factory.mktemp("packs") / "sd-tiny")
    return load_runner("stable-diffusion", pack, providers_preference="cpu")


async def test_an_image_task_returns_the_url_of_a_png_of_its_size(sd_runner: Any,
                                                                  tmp_path: Path) -> None:
    async with running_app(tmp_path / "api.db") as harness, agent_worker(
            harness, {"stable-diffusion": sd_runner}, weights={"stable-diffusion": WEIGHTS}):
        created = await harness.submit({"prompt": "a red fox in the snow",
                                        "model": "stable-diffusion", "width": 96,
                                        "height": 64, "steps": 3, "seed": 7})
        task = await wait_for_status(harness, created["task_id"], "completed", timeout=60)
        assert task["content_type"] == "image/png"
        assert task["model_weights"] == WEIGHTS
        url = task["result"]
        assert url.startswith("http") and url.endswith(f"/api/tasks/{task['id']}/image.png")
        response = await harness.client.get(urlsplit(url).path)
        assert response.status_code == 200 and response.content_type == "image/png"
        image = Image.open(io.BytesIO(await response.get_data()))
        assert image.format == "PNG" and image.size == (96, 64)
        missing = await harness.client.get("/api/tasks/task_0_nope/image.png")
        assert missing.status_code == 404


async def test_image_parameters_are_checked_before_anything_is_stored(tmp_path: Path) -> None:
    async with running_app(tmp_path / "api.db") as harness:
        for body, field in (({"width": 100}, "width"), ({"height": 2048}, "height"),
                            ({"scheduler": "lms"}, "scheduler"),
                            ({"guidance_scale": 31}, "guidance_scale"),
                            ({"temperature": 0.5}, "temperature")):
            response = await harness.client.post("/api/tasks", json={
                "prompt": "x", "model": "stable-diffusion", **body})
            assert response.status_code == 400
            assert field in (await response.get_json())["details"]
        assert (await harness.services.store.stats()).total_tasks == 0


@attrs.define
class FakeImageRunner:
    """A lying node: claims an image and sends something else."""

    model_name: str = "stable-diffusion"

    def load(self) -> None:
        return None

    def run(self, inputs: Mapping[str, Any], params: Mapping[str, Any], on_progress: Any,
            should_stop: Any) -> RunResult:
        fake = base64.b64encode(b"GIF89a not a png at all").decode()
        return RunResult({"image_png_base64": fake, "width": 64, "height": 64},
                         {"steps": 1, "seconds": 0.01})

    def unload(self) -> None:
        return None


async def test_a_fake_image_is_refused_not_served(tmp_path: Path) -> None:
    async with running_app(tmp_path / "api.db") as harness, agent_worker(
            harness, {"stable-diffusion": FakeImageRunner()}):
        created = await harness.submit({"prompt": "x", "model": "stable-diffusion",
                                        "width": 64, "height": 64})
        task = await wait_for_status(harness, created["task_id"], "failed")
        assert "not a PNG" in task["error"] and task["result"] is None and task["cost"] == 0


def test_image_results_are_checked() -> None:
    png = io.BytesIO()
    Image.new("RGB", (16, 8)).save(png, format="PNG")
    encoded = base64.b64encode(png.getvalue()).decode()
    result = image_result("t1", {"image_png_base64": encoded, "width": 16, "height": 8})
    assert result is not None and (result.width, result.height) == (16, 8)
    assert result.path == "/api/tasks/t1/image.png" and result.blob.data == png.getvalue()
    assert image_result("t1", "just text") is None
    with pytest.raises(MediaError, match="not the 32x8 it claims"):
        image_result("t1", {"image_png_base64": encoded, "width": 32, "height": 8})
    with pytest.raises(MediaError, match="not valid base64"):
        image_result("t1", {"image_png_base64": "%%%"})


async def test_a_task_no_node_serves_says_so_and_expires_naming_the_model(tmp_path: Path) -> None:
    from engine.runtime import CoordinatorConfig

    async with running_app(tmp_path / "api.db",
                           coordinator=CoordinatorConfig(default_deadline=1.5)) as harness:
        created = await harness.submit({"prompt": "a cat", "model": "stable-diffusion"})
        assert "no online node serves stable-diffusion" in created["warning"]
        task = await wait_for_status(harness, created["task_id"], "expired", timeout=20)
        assert task["error"] == "deadline passed with no online node serving stable-diffusion"
