"""Property tests: any JSON body gets a JSON answer with the right status, never a
500, and a 200 only for a body that validation accepts. Each example runs an app
and posts BODIES_PER_EXAMPLE bodies to it (an app per body would spend the time starting)."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.access import Tier
from api.validation import InvalidRequest, parse_signup, parse_task

from .conftest import running_app

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
TASK_KEYS = ["prompt", "model", "priority", "max_tokens", "temperature", "top_p", "seed",
             "steps", "audio_seconds", "other"]
SIGNUP_KEYS = ["email", "type", "source", "other"]
field_values = (json_values | st.sampled_from(["llama2", "whisper", "stable-diffusion", "high",
                                               "critical", "developer", "a@example.com",
                                               "website", "hello"])
                | st.integers(-5, 5000) | st.floats(-1, 3))


def bodies(keys: list[str]) -> st.SearchStrategy[bytes]:
    objects = st.dictionaries(st.sampled_from(keys), field_values, max_size=len(keys))
    return (objects | json_values).map(lambda value: json.dumps(value).encode())


def expected_status(parse, body: bytes) -> int:  # type: ignore[no-untyped-def]
    value = json.loads(body)
    if not isinstance(value, dict):
        return 400
    try:
        parse(value)
    except InvalidRequest:
        return 400
    return 200


# Each example posts BODIES_PER_EXAMPLE bodies; generation may look slow to
# hypothesis on a busy machine, which is no fault of the code under test.
FUZZ = settings(deadline=None, max_examples=4,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
BODIES_PER_EXAMPLE = 60
UNLIMITED = {"beta": Tier("beta", 10**9, 10**9), "premium": Tier("premium", 10**9, 10**9)}


async def check(tmp_path: Path, path: str, parse, data: st.DataObject,  # type: ignore[no-untyped-def]
                keys: list[str]) -> None:
    async with running_app(tmp_path / "fuzz.db", tiers=UNLIMITED) as api:
        for _ in range(BODIES_PER_EXAMPLE):
            body = data.draw(bodies(keys))
            response = await api.client.post(path, data=body)
            answer = await response.get_json()
            assert response.status_code == expected_status(parse, body), answer
            assert answer["success"] is (response.status_code == 200)


@FUZZ
@given(data=st.data())
async def test_random_task_bodies(tmp_path: Path, data: st.DataObject) -> None:
    await check(tmp_path, "/api/tasks", parse_task, data, TASK_KEYS)


@FUZZ
@given(data=st.data())
async def test_random_signup_bodies(tmp_path: Path, data: st.DataObject) -> None:
    await check(tmp_path, "/api/beta/signup", parse_signup, data, SIGNUP_KEYS)
