# Scenarios: TOML files that describe a fleet, its workloads and the policies to run.
#
# Rules:
# - Validation is strict and total: an unknown key, a value of the wrong type or out
#   of range, an unknown GPU class, model, priority, placement or pricing policy, or
#   a trace file that is missing or malformed raises ScenarioError, whose one-line
#   message names the file, the key (as a dotted path, e.g. `workload[1].arrival.rate`)
#   and what was expected. The CLI prints it and exits 2; nothing past this module
#   ever sees an invalid scenario.
# - The schema is data: each table is a dict of key -> (parser, default). Every key,
#   unit and default is documented in sim/README.md; keep the two in step.
# - A Scenario is a frozen value: one run is a pure function of (scenario, seed).
from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from engine.core import (
    GPU_CLASSES, MODELS, POLICIES, PRICING, NodeSpec, Priority, TrustPolicy, resolve_model,
)

from .adversary import BEHAVIOURS, DEFAULT_DETECTION, Verification

from .workload import (
    DISTRIBUTIONS, Arrival, Diurnal, Distribution, Mmpp, Poisson, Trace, TraceError,
    TraceReplay, load_trace, on_off,
)

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEFAULT_SCENARIO = "default"


class ScenarioError(ValueError):
    """An invalid scenario. `str()` is the one line the CLI prints."""

    def __init__(self, source: str, key: str, expected: str, got: object = attrs.NOTHING):
        detail = f"expected {expected}"
        if got is not attrs.NOTHING:
            detail += f", got {got!r}"
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {detail}")


@attrs.frozen
class NodeGroup:
    count: int
    gpu: str
    region: str = ""
    slots: int = 1
    price_per_hour: float | None = None  # None: the GPU class's catalog price
    vram_gb: float = 0.0  # 0: the GPU class's memory
    models: tuple[str, ...] = ()  # models served; () is every model that fits
    warm: bool = True  # models loaded at the start (a restart always starts cold)
    mtbf: float = math.inf  # mean seconds between failures, exponential
    mttr: float = 300.0  # mean seconds to repair, exponential
    session_mean: float = math.inf  # churn: mean seconds online before leaving
    away_mean: float = 3600.0  # churn: mean seconds away before coming back
    # its nodes' real speed as a fraction of the claimed `gpu`'s catalog speed: below
    # 1 / CLAIM_TOLERANCE a false claim that check_hardware catches (engine/core/speed.py)
    speed: float = 1.0
    # adversaries (adversary.py): what a share of its results is, and validators
    behaviour: str = ""  # "" (honest) or a BEHAVIOURS name
    fraction: float = 1.0  # the share of its results that behave so
    trusted: bool = False  # the operator trusts it: it verifies others' results


@attrs.frozen
class ScriptedNode:
    """One recorded session of a node (a journal replay, see replay.py): it joins at
    `join` and is lost at `lost` or starts draining at `drain` (inf: never)."""

    spec: NodeSpec
    join: float
    lost: float = math.inf
    drain: float = math.inf


@attrs.frozen
class Workload:
    model: str
    arrival: Arrival
    priority: Priority = Priority.STANDARD
    name: str = ""
    service_time: Distribution | None = None  # seconds; overrides the catalog model
    prompt_tokens: Distribution = Distribution.constant(0)
    output_tokens: Distribution | None = None  # None: the model's default
    steps: Distribution | None = None
    audio_seconds: Distribution | None = None
    deadline: float = math.inf  # seconds after submission
    max_attempts: int = 3


@attrs.frozen
class Scenario:
    name: str
    nodes: tuple[NodeGroup, ...]
    workloads: tuple[Workload, ...]
    description: str = ""
    seed: int = 0
    duration: float = 3600.0
    warmup: float = 0.0
    policies: tuple[str, ...] = ("balanced",)
    pricings: tuple[str, ...] = ("static",)
    service_noise: float = 0.1
    drain_limit: float = math.inf
    max_queued: int = 1_000_000
    region_latency: Mapping[str, float] = attrs.field(factory=dict)
    replications: int = 1
    source: str = "<scenario>"
    scripted_nodes: tuple[ScriptedNode, ...] = ()  # a journal's fleet (replay.py)
    # the scheduler's measured-speed options (SchedulerConfig; off: the catalog's figures)
    measured_speed: bool = False
    check_hardware: bool = False
    verification: Verification | None = None  # [verification]: None, off

    def evolve(self, **changes: Any) -> Scenario:
        return attrs.evolve(self, **changes)


# ---- value parsers: (value, key, ctx) -> parsed value, or ScenarioError ---------------


@attrs.frozen
class _Ctx:
    source: str
    base: Path  # directory that relative file paths are resolved against

    def fail(self, key: str, expected: str, got: object = attrs.NOTHING) -> ScenarioError:
        return ScenarioError(self.source, key, expected, got)


Parser = Callable[[Any, str, _Ctx], Any]


def _number(low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
            allow_inf: bool = False) -> Parser:
    bound = f"> {low:g}" if open_low else (f">= {low:g}" if low > -math.inf else "")
    if high < math.inf:
        bound += f"{' and ' if bound else ''}<= {high:g}"
    what = f"a number{' ' + bound if bound else ''}"

    def parse(value: Any, key: str, ctx: _Ctx) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.fail(key, what, value)
        number = float(value)
        if math.isnan(number) or (math.isinf(number) and not allow_inf):
            raise ctx.fail(key, f"a finite number{' ' + bound if bound else ''}", number)
        if number < low or (open_low and number <= low) or number > high:
            raise ctx.fail(key, what, number)
        return number
    return parse


def _integer(low: int) -> Parser:
    def parse(value: Any, key: str, ctx: _Ctx) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ctx.fail(key, f"an integer >= {low}", value)
        return value
    return parse


def _string(value: Any, key: str, ctx: _Ctx) -> str:
    if not isinstance(value, str):
        raise ctx.fail(key, "a string", value)
    return value


def _boolean(value: Any, key: str, ctx: _Ctx) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(key, "true or false", value)
    return value


def _choice(known: Mapping[str, Any] | tuple[str, ...], what: str) -> Parser:
    names = tuple(known)

    def parse(value: Any, key: str, ctx: _Ctx) -> str:
        if not isinstance(value, str) or value not in names:
            raise ctx.fail(key, f"{what}, one of: {', '.join(names)}", value)
        return value
    return parse


def _names(known: Mapping[str, Any], what: str) -> Parser:
    """A name, a list of names, or "all" (every registered one, in registry order)."""
    one = _choice(known, what)

    def parse(value: Any, key: str, ctx: _Ctx) -> tuple[str, ...]:
        if value == "all":
            return tuple(known)
        if isinstance(value, list):
            if not value:
                raise ctx.fail(key, f"at least one {what}", value)
            return tuple(one(v, f"{key}[{i}]", ctx) for i, v in enumerate(value))
        return (one(value, key, ctx),)
    return parse


def _model(value: Any, key: str, ctx: _Ctx) -> str:
    if not isinstance(value, str):
        raise ctx.fail(key, "a model name", value)
    try:
        return resolve_model(value).name
    except ValueError:
        raise ctx.fail(key, f"a model, one of: {', '.join(MODELS)}", value) from None


def _models(value: Any, key: str, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.fail(key, "a non-empty list of model names", value)
    return tuple(_model(v, f"{key}[{i}]", ctx) for i, v in enumerate(value))


def _priority(value: Any, key: str, ctx: _Ctx) -> Priority:
    if not isinstance(value, str):
        raise ctx.fail(key, "standard, high or critical", value)
    try:
        return Priority.parse(value)
    except ValueError:
        raise ctx.fail(key, "standard, high or critical", value) from None


def _latency_table(value: Any, key: str, ctx: _Ctx) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ctx.fail(key, "a table of region = seconds", value)
    seconds = _number(0.0)
    return {region: seconds(v, f"{key}.{region}", ctx) for region, v in value.items()}


def _table(value: Any, key: str, ctx: _Ctx, schema: Mapping[str, Parser],
           required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a TOML table against `schema`; returns the parsed keys it holds."""
    if not isinstance(value, dict):
        raise ctx.fail(key, "a table", value)
    out = {}
    for name, raw in value.items():
        parser = schema.get(name)
        sub = f"{key}.{name}" if key else name
        if parser is None:
            raise ctx.fail(sub, f"no such key (known here: {', '.join(schema)})")
        out[name] = parser(raw, sub, ctx)
    for name in required:
        if name not in out:
            raise ctx.fail(f"{key}.{name}" if key else name, "this key (it is required)")
    return out


def _distribution(value: Any, key: str, ctx: _Ctx) -> Distribution:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Distribution.constant(_number(0.0)(value, key, ctx))
    kinds = ", ".join(DISTRIBUTIONS)
    if not isinstance(value, dict) or not isinstance(value.get("dist"), str):
        raise ctx.fail(key, f"a number or a table {{ dist = ..., ... }} with dist one of: {kinds}",
                       value)
    kind = value["dist"]
    params = DISTRIBUTIONS.get(kind)
    if params is None:
        raise ctx.fail(f"{key}.dist", f"one of: {kinds}", kind)
    schema: dict[str, Parser] = {"dist": _string}
    for name in params:
        schema[name] = _number(0.0, open_low=name in ("mean", "median", "cv"))
    parsed = _table(value, key, ctx, schema, required=params)
    if kind == "uniform" and parsed["high"] < parsed["low"]:
        raise ctx.fail(f"{key}.high", f"a number >= low ({parsed['low']:g})", parsed["high"])
    return Distribution(kind, tuple(parsed[name] for name in params))


_POSITIVE = _number(0.0, open_low=True)
_ARRIVALS: dict[str, tuple[dict[str, Parser], tuple[str, ...]]] = {
    "poisson": ({"rate": _POSITIVE}, ("rate",)),
    "bursty": ({"rate": _POSITIVE, "off_rate": _number(0.0), "mean_on": _POSITIVE,
                "mean_off": _POSITIVE}, ("rate", "mean_on", "mean_off")),
    "mmpp": ({"rates": lambda v, k, c: _number_list(v, k, c, _number(0.0)),
              "mean_holding": lambda v, k, c: _number_list(v, k, c, _POSITIVE)},
             ("rates", "mean_holding")),
    "diurnal": ({"rate": _POSITIVE, "amplitude": _number(0.0, 1.0), "period": _POSITIVE,
                 "peak": _number(0.0)}, ("rate", "amplitude")),
    "trace": ({"file": _string, "time_scale": _POSITIVE, "start": _number(0.0)}, ("file",)),
}


def _number_list(value: Any, key: str, ctx: _Ctx, item: Parser) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.fail(key, "a non-empty list of numbers", value)
    return tuple(item(v, f"{key}[{i}]", ctx) for i, v in enumerate(value))


_TRACE_CACHE: dict[tuple[Path, float], Trace] = {}


def _trace(path_text: str, key: str, ctx: _Ctx) -> Trace:
    path = (ctx.base / path_text).resolve()
    if not path.is_file():
        raise ctx.fail(key, "an existing trace CSV file (relative to the scenario file)",
                       str(path))
    cache_key = (path, path.stat().st_mtime)
    trace = _TRACE_CACHE.get(cache_key)
    if trace is None:
        try:
            trace = load_trace(path)
        except (TraceError, OSError, UnicodeDecodeError) as exc:
            raise ctx.fail(key, "a readable trace CSV", str(exc)) from None
        _TRACE_CACHE[cache_key] = trace
    return trace


def _arrival(value: Any, key: str, ctx: _Ctx) -> Arrival:
    processes = ", ".join(_ARRIVALS)
    if not isinstance(value, dict) or value.get("process") not in _ARRIVALS:
        got = value.get("process") if isinstance(value, dict) else value
        raise ctx.fail(f"{key}.process" if isinstance(value, dict) else key,
                       f"an arrival process, one of: {processes}", got)
    process = value["process"]
    schema, required = _ARRIVALS[process]
    p = _table(value, key, ctx, {"process": _string, **schema}, required)
    if process == "poisson":
        return Poisson(p["rate"])
    if process == "bursty":
        return on_off(p["rate"], p["mean_on"], p["mean_off"], p.get("off_rate", 0.0))
    if process == "mmpp":
        if len(p["rates"]) != len(p["mean_holding"]):
            raise ctx.fail(f"{key}.mean_holding", f"{len(p['rates'])} numbers, one per rate",
                           list(p["mean_holding"]))
        return Mmpp(p["rates"], p["mean_holding"])
    if process == "diurnal":
        return Diurnal(p["rate"], p["amplitude"], p.get("period", 86400.0),
                       p.get("peak", 50400.0))
    trace = _trace(p["file"], f"{key}.file", ctx)
    return TraceReplay(trace, p.get("time_scale", 1.0), p.get("start", 0.0))


_NODE_SCHEMA: dict[str, Parser] = {
    "count": _integer(1), "gpu": _choice(GPU_CLASSES, "a GPU class"), "region": _string,
    "slots": _integer(1), "price_per_hour": _number(0.0), "vram_gb": _POSITIVE,
    "models": _models, "warm": _boolean,
    "mtbf": _POSITIVE, "mttr": _POSITIVE, "session_mean": _POSITIVE, "away_mean": _POSITIVE,
    "speed": _POSITIVE,
    "behaviour": _choice(BEHAVIOURS, "an adversary behaviour"), "fraction": _number(0.0, 1.0),
    "trusted": _boolean,
}

_FRACTION = _number(0.0, 1.0)
_VERIFICATION_SCHEMA: dict[str, Parser] = {
    "mode": _choice(("none", "sampled", "always"), "a verify mode"),
    "probation": _integer(0), "rate_floor": _FRACTION, "rate_gain": _number(0.0),
    "quarantine_below": _FRACTION, "validator_after": _integer(0),
    "validator_score": _FRACTION, "job_deadline": _POSITIVE,
    "probation_tasks": _integer(0), "limit_score": _FRACTION,  # probation_tasks 0: no limit
    "false_positive": _FRACTION,
    "detection": lambda v, k, c: _table(v, k, c, dict.fromkeys(BEHAVIOURS, _FRACTION)),
}

_WORKLOAD_SCHEMA: dict[str, Parser] = {
    "name": _string, "model": _model, "priority": _priority, "arrival": _arrival,
    "service_time": _distribution, "prompt_tokens": _distribution,
    "output_tokens": _distribution, "steps": _distribution, "audio_seconds": _distribution,
    "deadline": _POSITIVE, "max_attempts": _integer(1),
}

_TOP_SCHEMA: dict[str, Parser] = {
    "name": _string, "description": _string, "seed": _integer(0),
    "duration": _POSITIVE, "warmup": _number(0.0),
    "policy": _names(POLICIES, "a placement policy"),
    "pricing": _names(PRICING, "a pricing policy"),
    "service_noise": _number(0.0), "drain_limit": _number(0.0, allow_inf=True),
    "max_queued": _integer(1), "replications": _integer(1),
    "measured_speed": _boolean, "check_hardware": _boolean,
    "nodes": lambda v, k, c: v, "workload": lambda v, k, c: v,  # checked below
    "network": lambda v, k, c: _table(v, k, c, {"latency": _latency_table}),
    "verification": lambda v, k, c: _table(v, k, c, _VERIFICATION_SCHEMA),
}


def _array_of_tables(value: Any, key: str, ctx: _Ctx) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ctx.fail(key, f"one or more [[{key}]] tables", value)
    return value


def _node_group(raw: dict[str, Any], key: str, ctx: _Ctx) -> NodeGroup:
    p = _table(raw, key, ctx, _NODE_SCHEMA, required=("count", "gpu"))
    gpu = GPU_CLASSES[p["gpu"]]
    vram = p.get("vram_gb", gpu.vram_gb)
    fits = tuple(m for m in MODELS if MODELS[m].vram_gb <= vram)
    models = p.get("models", fits)
    for i, model in enumerate(models):
        if model not in fits:
            raise ctx.fail(f"{key}.models[{i}]",
                           f"a model that fits in {vram:g} GB of VRAM", model)
    return NodeGroup(
        count=p["count"], gpu=p["gpu"], region=p.get("region", ""), slots=p.get("slots", 1),
        price_per_hour=p.get("price_per_hour"), vram_gb=vram, models=models,
        warm=p.get("warm", True), mtbf=p.get("mtbf", math.inf), mttr=p.get("mttr", 300.0),
        session_mean=p.get("session_mean", math.inf), away_mean=p.get("away_mean", 3600.0),
        speed=p.get("speed", 1.0),
        behaviour=p.get("behaviour", ""), fraction=p.get("fraction", 1.0),
        trusted=p.get("trusted", False),
    )


def _verification(p: Mapping[str, Any]) -> Verification:
    policy = {k: v for k, v in p.items()
              if k in attrs.fields_dict(TrustPolicy)}
    if policy.get("probation_tasks") == 0:
        policy["probation_tasks"] = None  # TrustPolicy's "no probation limit"
    return Verification(p.get("mode", "sampled"), TrustPolicy(**policy),
                        {**DEFAULT_DETECTION, **p.get("detection", {})},
                        p.get("false_positive", 0.0))


def _workload(raw: dict[str, Any], key: str, ctx: _Ctx) -> Workload:
    p = _table(raw, key, ctx, _WORKLOAD_SCHEMA, required=("arrival",))
    model = p.get("model", "llama2:7b")
    if isinstance(p["arrival"], TraceReplay) and MODELS[model].work_unit != "token":
        raise ctx.fail(f"{key}.model", "a text-generation model for a token trace", model)
    return Workload(
        model=model, arrival=p["arrival"], priority=p.get("priority", Priority.STANDARD),
        name=p.get("name", ""), service_time=p.get("service_time"),
        prompt_tokens=p.get("prompt_tokens", Distribution.constant(0)),
        output_tokens=p.get("output_tokens"), steps=p.get("steps"),
        audio_seconds=p.get("audio_seconds"), deadline=p.get("deadline", math.inf),
        max_attempts=p.get("max_attempts", 3),
    )


def parse_scenario(data: Mapping[str, Any], source: str = "<scenario>",
                   base: Path | None = None) -> Scenario:
    """Validate a decoded TOML document; `base` resolves relative trace paths."""
    ctx = _Ctx(source, base if base is not None else Path.cwd())
    p = _table(dict(data), "", ctx, _TOP_SCHEMA, required=("nodes", "workload"))
    groups = tuple(_node_group(raw, f"nodes[{i}]", ctx)
                   for i, raw in enumerate(_array_of_tables(p["nodes"], "nodes", ctx)))
    workloads = tuple(_workload(raw, f"workload[{i}]", ctx)
                      for i, raw in enumerate(_array_of_tables(p["workload"], "workload", ctx)))
    served = {m for g in groups for m in g.models}
    for i, w in enumerate(workloads):
        if w.model not in served:
            raise ctx.fail(f"workload[{i}].model", "a model that some [[nodes]] group serves",
                           w.model)
    duration = p.get("duration", 3600.0)
    warmup = p.get("warmup", 0.0)
    if warmup >= duration:
        raise ctx.fail("warmup", f"a number < duration ({duration:g})", warmup)
    return Scenario(
        name=p.get("name", Path(source).stem), description=p.get("description", ""),
        nodes=groups, workloads=workloads, seed=p.get("seed", 0), duration=duration,
        warmup=warmup, policies=p.get("policy", ("balanced",)),
        pricings=p.get("pricing", ("static",)), service_noise=p.get("service_noise", 0.1),
        drain_limit=p.get("drain_limit", math.inf), max_queued=p.get("max_queued", 1_000_000),
        region_latency=p.get("network", {}).get("latency", {}),
        replications=p.get("replications", 1), source=source,
        measured_speed=p.get("measured_speed", False),
        check_hardware=p.get("check_hardware", False),
        verification=_verification(p["verification"]) if "verification" in p else None,
    )


def bundled_scenarios() -> dict[str, Path]:
    """Name -> path of every scenario shipped in sim/scenarios/."""
    return {path.stem: path for path in sorted(SCENARIO_DIR.glob("*.toml"))}


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario file, or a bundled scenario by name (`azure-conv`)."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        bundled = bundled_scenarios()
        if str(name_or_path) not in bundled:
            raise ScenarioError(str(name_or_path), "",
                                f"a .toml file or a bundled scenario, one of: {', '.join(bundled)}")
        path = bundled[str(name_or_path)]
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(str(path), "", "a readable scenario file", exc.strerror) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), "", f"valid TOML ({exc})") from None
    return parse_scenario(data, str(path), path.parent)
