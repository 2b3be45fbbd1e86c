"""Hypothesis strategies shared by the test suites (one place, per DESIGN.md)."""
from __future__ import annotations

from hypothesis import strategies as st

from engine.core import GPU_CLASSES, MODELS, POLICIES

GPU_NAMES = sorted(GPU_CLASSES)
MODEL_NAMES = sorted(MODELS)
REGIONS = ["eu-west", "us-east", "ap-south"]

# One step of a scheduler scenario: a kind, drawn with weights (submissions and
# completions are the common case), and every parameter any kind may need. Indices
# pick among what exists at that moment (modulo its count), so every generated
# sequence is valid to apply.
OP_KINDS = (["submit"] * 6 + ["finish"] * 5 + ["join"] * 2 + ["tick"] * 2
            + ["fail", "cancel", "lose", "drain", "heartbeat"])
scheduler_ops = st.tuples(
    st.sampled_from(OP_KINDS),
    st.fixed_dictionaries({
        "gpu": st.sampled_from(GPU_NAMES),
        "models": st.lists(st.sampled_from(MODEL_NAMES), min_size=1, max_size=3, unique=True),
        "slots": st.integers(1, 3),
        "region": st.sampled_from(REGIONS),
        "price": st.sampled_from([None, 0.2, 0.6, 3.0]),
        "vram": st.sampled_from([8.0, 24.0, 80.0]),
        "model": st.sampled_from(MODEL_NAMES),
        "priority": st.integers(0, 2),
        "size": st.integers(1, 2000),
        "ttl": st.sampled_from([None, 5.0, 60.0]),
        "pick": st.integers(0, 1000),
        "retryable": st.booleans(),
        "dt": st.floats(0.0, 8.0),
    }),
)

policy_names = st.sampled_from(sorted(POLICIES))


# ---- worker protocol frames (engine/protocol/codec) -----------------------------
# Valid messages of every type; JSON values of any shape; and text frames that are
# garbage, valid JSON of the wrong shape, or valid frames with one mutation.
import json as _json  # noqa: E402

from engine.core import Usage as _Usage  # noqa: E402
from engine.protocol import codec as _codec  # noqa: E402

TASK_IDS = ["t0", "t1", "t2", "t3", "ghost"]
_ids = st.sampled_from(TASK_IDS)
_names = st.text(min_size=1, max_size=12)
_small = st.floats(0, 1e6, allow_nan=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
)
_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
_usages = st.builds(_Usage, seconds=_small, tokens=st.integers(0, 10**6),
                    prompt_tokens=st.integers(0, 10**6), steps=st.integers(0, 100),
                    audio_seconds=_small)
worker_messages = st.one_of(
    st.builds(_codec.Hello, token=st.text(max_size=20),
              gpu=st.builds(_codec.Gpu, st.text(max_size=20), _small),
              models=st.lists(st.sampled_from(["llama2:7b", "llama2", "whisper", "noop"]),
                              max_size=3).map(tuple),
              slots=st.integers(0, 300), name=st.text(max_size=10),
              price_per_hour=st.none() | _small, protocol=st.integers(0, 2)),
    st.builds(_codec.Heartbeat, running=st.lists(_ids, max_size=4).map(tuple), load=_small),
    st.builds(_codec.Accepted, _ids),
    st.builds(_codec.Progress, _ids, st.dictionaries(st.sampled_from(["tokens", "index", "x"]),
                                                     json_values, max_size=3)),
    st.builds(_codec.Result, _ids, json_values, _usages, st.sampled_from(["", "stop", "length"])),
    st.builds(_codec.Failed, _ids, st.text(max_size=20), st.booleans()),
    st.just(_codec.Draining()),
)
coordinator_messages = st.one_of(
    st.builds(_codec.Welcome, _names, _small, st.none() | _small),
    st.builds(_codec.AssignTask, _ids, _names, _objects, _objects, st.none() | _small,
              st.integers(1, 5)),
    st.builds(_codec.CancelTask, _ids, st.text(max_size=20)),
    st.builds(_codec.Error, st.text(max_size=40), st.booleans()),
)


@st.composite
def mutated_frames(draw) -> str:
    """A valid worker frame with one thing broken (or, rarely, left valid)."""
    frame = _json.loads(_codec.encode(draw(worker_messages)))
    how = draw(st.sampled_from(["drop", "revalue", "retype", "truncate", "splice", "none"]))
    keys = sorted(frame)
    if how == "drop":
        frame.pop(draw(st.sampled_from(keys)))
    elif how == "revalue":
        frame[draw(st.sampled_from(keys))] = draw(json_values)
    elif how == "retype":
        frame["type"] = draw(st.sampled_from([*_codec.TYPES, "", "HELLO", "nope"]))
    text = _json.dumps(frame)
    if how == "truncate":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif how == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=3)) + text[at:]
    return text


garbage_frames = st.one_of(
    st.text(max_size=64),
    json_values.map(_json.dumps),
    mutated_frames(),
)


# ---- simulator scenarios (tests/sim) ------------------------------------------------
# A small valid scenario document (the decoded TOML), for sim.parse_scenario: a fleet
# of one to three groups, one to three workloads of any arrival process but traces,
# optional failures, churn, deadlines and network latency.

_sim_sizes = st.one_of(
    st.integers(0, 400),
    st.builds(lambda m, s: {"dist": "lognormal", "median": m, "sigma": s},
              st.integers(20, 400), st.floats(0.1, 1.0)),
)

_sim_arrivals = st.one_of(
    st.builds(lambda r: {"process": "poisson", "rate": r}, st.floats(0.2, 4.0)),
    st.builds(lambda r, on, off: {"process": "bursty", "rate": r, "mean_on": on,
                                  "mean_off": off},
              st.floats(0.5, 8.0), st.floats(5.0, 60.0), st.floats(5.0, 60.0)),
    st.builds(lambda r, a: {"process": "diurnal", "rate": r, "amplitude": a,
                            "period": 300.0},
              st.floats(0.2, 4.0), st.floats(0.0, 1.0)),
    st.builds(lambda rates: {"process": "mmpp", "rates": rates,
                             "mean_holding": [20.0] * len(rates)},
              st.lists(st.floats(0.0, 5.0), min_size=1, max_size=3)),
)


def _sim_group(gpu, count, slots, region, failures, churn):
    group = {"count": count, "gpu": gpu, "slots": slots, "region": region}
    if failures:
        group.update(mtbf=120.0, mttr=20.0)
    if churn:
        group.update(session_mean=150.0, away_mean=30.0)
    return group


def _sim_workload(model, priority, arrival, prompt, output, deadline, exponential):
    workload = {"model": model, "priority": priority, "arrival": arrival,
                "prompt_tokens": prompt, "output_tokens": output}
    if deadline is not None:
        workload["deadline"] = deadline
    if exponential:
        workload["service_time"] = {"dist": "exponential", "mean": 1.0}
    return workload


sim_scenarios = st.builds(
    lambda groups, workloads, policy, latency: {
        "duration": 300.0, "warmup": 30.0, "policy": policy, "nodes": groups,
        "workload": workloads,
        "network": {"latency": {r: latency for r in REGIONS}},
    },
    st.lists(st.builds(_sim_group, st.sampled_from(GPU_NAMES), st.integers(1, 4),
                       st.integers(1, 2), st.sampled_from(REGIONS), st.booleans(),
                       st.booleans()), min_size=1, max_size=3),
    st.lists(st.builds(_sim_workload, st.sampled_from(["llama2:7b", "whisper"]),
                       st.sampled_from(["standard", "high", "critical"]), _sim_arrivals,
                       _sim_sizes, _sim_sizes, st.sampled_from([None, 10.0, 60.0]),
                       st.booleans()), min_size=1, max_size=3),
    st.sampled_from(sorted(POLICIES)),
    st.sampled_from([0.0, 0.05]),
)
