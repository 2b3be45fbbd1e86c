"""Speech tasks end to end: audio reaches a whisper task as base64 in the JSON body
or as a multipart `file` upload; the API measures its length from the decoded file
(that is what the task is sized, quoted and metered by); a real worker agent runs
Whisper on it; unreadable audio is a 400 that stores nothing."""
from __future__ import annotations

import base64
import io
import wave
from pathlib import Path
from typing import Any

import pytest
from quart.datastructures import FileStorage

from engine.worker.packs import ensure_whisper_pack
from engine.worker.runners import load_runner
from tests.api.conftest import agent_worker, running_app, wait_for_status
from tests.engine.worker.whisper.helpers import espeak_available, espeak_wav, word_error_rate

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
WEIGHTS = "whisper-tiny.en (stand-in for whisper)"

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed "
                                  "(apt-get install espeak-ng) to make the test speech")


@pytest.fixture(scope="module")
def whisper_runner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pack = ensure_whisper_pack("whisper-tiny.en", tmp_path_factory.mktemp("packs") / "tiny",
                               show_progress=False)
    return load_runner("whisper", pack, providers_preference="cpu")


@needs_espeak
async def test_a_spoken_sentence_is_transcribed_by_json_and_by_upload(whisper_runner: Any,
                                                                      tmp_path: Path) -> None:
    wav = espeak_wav(SENTENCE)
    async with running_app(tmp_path / "api.db") as harness, agent_worker(
            harness, {"whisper": whisper_runner}, weights={"whisper": WEIGHTS}):
        by_json = await harness.submit({"model": "whisper",
                                        "audio": base64.b64encode(wav).decode()})
        upload = await harness.client.post("/api/tasks", form={"model": "whisper",
                                                               "max_tokens": "200"},
                                           files={"file": _file(wav)})
        assert upload.status_code == 200, await upload.get_data()
        by_upload = await upload.get_json()
        for created in (by_json, by_upload):
            task = await wait_for_status(harness, created["task_id"], "completed", timeout=120)
            assert word_error_rate(SENTENCE, task["result"]) <= 0.3, task["result"]
            assert task["model_weights"] == WEIGHTS
            # sized by the measured audio, not by anything the client said
            assert task["params"]["audio_seconds"] == pytest.approx(_wav_seconds(wav), abs=0.01)
            assert "audio" not in task["params"]
        assert by_upload["estimated_time"] == by_json["estimated_time"]


async def test_unusable_audio_is_a_400_that_stores_nothing(tmp_path: Path) -> None:
    async with running_app(tmp_path / "api.db") as harness:
        cases = [
            ({"model": "whisper"}, "'audio' field is required"),
            ({"model": "whisper", "audio": "not base64!"}, "not valid base64"),
            ({"model": "whisper", "audio": base64.b64encode(b"RIFF....WAVEjunk").decode()},
             "not a readable audio file"),
            ({"model": "whisper", "audio": "UklGRg==", "audio_seconds": 1.0},
             "measured from the task's input"),
        ]
        for body, message in cases:
            response = await harness.client.post("/api/tasks", json=body)
            assert response.status_code == 400
            assert message in (await response.get_json())["details"]
        bad_form = await harness.client.post("/api/tasks", form={"model": "whisper",
                                                                 "max_tokens": "many"},
                                             files={"file": _file(b"x")})
        assert bad_form.status_code == 400
        assert "max_tokens" in (await bad_form.get_json())["details"]
        assert (await harness.services.store.stats()).total_tasks == 0


def _file(data: bytes) -> FileStorage:
    return FileStorage(io.BytesIO(data), filename="speech.wav", content_type="audio/wav")


def _wav_seconds(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as w:
        return w.getnframes() / w.getframerate()
