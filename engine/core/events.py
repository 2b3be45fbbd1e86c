# The vocabulary of the scheduling core: values that go in (events) and values
# that come out (decisions).
#
# Rules:
# - Everything here is an immutable attrs value with no behaviour: a driver builds
#   events from what it observes (a websocket frame, a simulated completion, an HTTP
#   request) and carries out decisions (send a frame, schedule a simulated finish).
# - Events are nouns in the past tense (something happened); decisions are
#   imperatives (do this). Time never travels inside an event: it is the `now`
#   argument of `Scheduler.handle`.
# - A task's payload (prompt text, image, audio) never enters the core: the core
#   sees only the size of the work. Drivers keep payloads keyed by task id.
from __future__ import annotations

import enum
import math
from typing import get_args

import attrs

from .catalog import MODELS
from .values import slot_init


class Priority(enum.IntEnum):
    STANDARD = 0
    HIGH = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Priority:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(
                f"unknown priority {text!r} (expected one of: standard, high, critical)"
            ) from None


class TaskState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"

    # Members are singletons: hash by identity (C speed; Enum's own hash is Python).
    __hash__ = object.__hash__

    @property
    def is_final(self) -> bool:
        return self not in (TaskState.QUEUED, TaskState.RUNNING)


class VerifyMode(enum.StrEnum):
    """Whether a task's result is checked by a validator node before it is
    delivered (verification.py): never, on a sample (the rate set by the producing
    node's reputation), or always."""

    NONE = "none"
    SAMPLED = "sampled"
    ALWAYS = "always"

    __hash__ = object.__hash__

    @classmethod
    def parse(cls, text: str) -> VerifyMode:
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown verify mode {text!r} (expected one of: "
                             f"{', '.join(m.value for m in cls)})") from None


def _work_of(spec: TaskSpec) -> float:
    """The task's work in its kind's unit; 0 for a model the catalog does not know
    (the scheduler rejects such a task, naming the model)."""
    model = MODELS.get(spec.model)
    if model is None:
        return 0.0
    return model.kind.work(spec.prompt_tokens, spec.output_tokens, spec.steps,
                           spec.audio_seconds)


@attrs.frozen
class TaskSpec:
    """What the core knows of a task: its identity, model, priority and size, and
    the work that size means (computed from the task kind's formula unless the
    builder, who may have computed it already, passes it)."""

    task_id: str
    model: str  # canonical model name (see catalog.resolve_model)
    priority: Priority = Priority.STANDARD
    prompt_tokens: int = 0
    output_tokens: int = 0  # expected (max) generated tokens, text generation
    steps: int = 0  # denoising steps, image generation
    audio_seconds: float = 0.0  # speech-to-text
    deadline: float = math.inf  # absolute time; the task expires if not done by then
    max_attempts: int = 3  # runs allowed, counting retries after retryable failures
    owner: str = ""  # opaque: the API key or client that submitted it
    work: float = attrs.field(default=attrs.Factory(_work_of, takes_self=True))
    # whether a validator checks the result before it is delivered (verification.py).
    # Not converted (a converter was 523 of the 18,313 instructions of building a
    # spec, callgrind): the core compares it with == and !=, which a StrEnum member
    # and its name answer alike, and every builder from outside (the API, the
    # journal, the simulator) parses it first.
    verify: VerifyMode = VerifyMode.NONE


@attrs.frozen
class NodeSpec:
    """A node as it announces itself when it joins."""

    node_id: str
    gpu: str  # GPU class name, e.g. "RTX 4090"
    vram_gb: float
    models: tuple[str, ...]  # canonical model names it can serve
    slots: int = 1  # tasks it runs at once
    price_per_hour: float | None = None  # None: the GPU class's default price
    region: str = ""
    loaded: tuple[str, ...] = ()  # models already warm in GPU memory
    name: str = ""
    location: str = ""  # human-readable place, e.g. "Germany"
    trusted: bool = False  # the operator trusts it to verify others' results


@attrs.frozen
class Usage:
    """Measured work of a finished task, as the node reports it."""

    seconds: float  # GPU busy time
    tokens: int = 0  # generated tokens
    prompt_tokens: int = 0
    steps: int = 0
    audio_seconds: float = 0.0


# ---- events -------------------------------------------------------------------


@attrs.frozen
class TaskSubmitted:
    task: TaskSpec


@attrs.frozen
class TaskCancelled:
    task_id: str


@attrs.frozen
class TaskFinished:
    task_id: str
    node_id: str
    usage: Usage


@attrs.frozen
class TaskFailed:
    task_id: str
    node_id: str
    error: str
    retryable: bool = True


@attrs.frozen
class TaskFaulted:
    """The node misbehaved with a task it runs: the driver refused its report as a
    protocol violation (impossible usage, text that is not Unicode). The task is
    taken back and re-queued, charged to the node like a lost node's task, never to
    the task's attempts."""

    task_id: str
    node_id: str
    reason: str


@attrs.frozen
class DeliveryFailed:
    """The driver could not hand an assigned task to its node (the socket died
    mid-send). The task goes back to the queue without counting as an attempt."""

    task_id: str
    node_id: str


@attrs.frozen
class NodeJoined:
    node: NodeSpec


@attrs.frozen
class NodeHeartbeat:
    node_id: str
    loaded: tuple[str, ...] | None = None  # models warm now, when the node says


@attrs.frozen
class NodeDraining:
    """The node finishes what it runs but takes nothing new (graceful shutdown)."""

    node_id: str


@attrs.frozen
class NodeLost:
    node_id: str
    reason: str = "disconnected"


@attrs.frozen
class VerificationReported:
    """A validator's verdict on a held result (the verification job `task_id`, run
    by `node_id`; see verification.py)."""

    task_id: str
    node_id: str
    passed: bool
    score: float = 0.0
    detail: str = ""


@attrs.frozen
class Tick:
    """Time has passed; let deadlines fire."""


Event = (
    TaskSubmitted | TaskCancelled | TaskFinished | TaskFailed | TaskFaulted | DeliveryFailed
    | NodeJoined | NodeHeartbeat | NodeDraining | NodeLost | VerificationReported | Tick
)


# ---- decisions ----------------------------------------------------------------


@attrs.frozen
class Assign:
    task_id: str
    node_id: str
    model: str
    attempt: int  # 1 for the first run
    deadline: float
    cold: bool  # the node must load the model first
    # a verification job: the id of the task whose held result it checks (send the
    # node that result's output and proof, and the task's own input)
    verifies: str | None = None


@attrs.frozen
class Reject:
    task_id: str
    reason: str


@attrs.frozen
class Requeue:
    """The task left its node and waits again; tell the node to drop it if it can."""

    task_id: str
    node_id: str
    reason: str


@attrs.frozen
class Cancel:
    """Tell the node to stop the task (it was cancelled or expired while running)."""

    task_id: str
    node_id: str


@attrs.frozen
class Complete:
    task_id: str
    node_id: str
    cost: float  # dollars charged to the client
    usage: Usage
    clamped: bool = False  # the measured charge was above the bound: `cost` is the bound


@attrs.frozen
class Fail:
    task_id: str
    error: str
    node_id: str | None


@attrs.frozen
class Expire:
    task_id: str
    node_id: str | None  # where it was running, if it was


@attrs.frozen
class Cancelled:
    """The cancellation took effect: the task ends as cancelled."""

    task_id: str


@attrs.frozen
class Drop:
    """The node's connection should be closed: the core considers it lost."""

    node_id: str
    reason: str


@attrs.frozen
class Hold:
    """The node's result for the task is held, not delivered nor charged, until the
    verification job `job_id` gives its verdict: keep its output and proof."""

    task_id: str
    node_id: str
    job_id: str


@attrs.frozen
class Verified:
    """How a task's result fared under verification (verification.py), just before
    its Complete, or its Requeue (`rerun`: the result failed and the task runs
    again elsewhere), or its Fail.
    status: passed | failed | unverified (delivered without a verdict: `detail`
    says why) | skipped (not sampled)."""

    task_id: str
    status: str
    producer: str  # the node whose result it was
    validator: str | None = None
    score: float | None = None
    detail: str = ""
    rerun: bool = False


@attrs.frozen
class Quarantine:
    """The node gets no more tasks: tell its operator why (the worker's log)."""

    node_id: str
    reason: str


@attrs.frozen
class WakeAt:
    time: float


Decision = (
    Assign | Reject | Requeue | Cancel | Complete | Fail | Expire | Cancelled | Drop
    | Hold | Verified | Quarantine | WakeAt
)

# Every value here is built on the core's paths, several for each task: each gets
# the __init__ that sets its slots through their descriptors (values.py).
for value_type in (TaskSpec, NodeSpec, Usage, *get_args(Event), *get_args(Decision)):
    slot_init(value_type)
del value_type
