"""slot_init: the descriptor-setting __init__ builds what attrs' own __init__
builds, for every kind of field it accepts, and refuses what it does not copy."""
from __future__ import annotations

import inspect
from typing import get_args

import attrs
import pytest

from engine.core import TaskSpec
from engine.core.events import Assign, Decision, Event, NodeSpec, Usage
from engine.core.values import slot_init


def sample() -> type:
    """A fresh attrs class with every kind of field slot_init accepts."""

    @attrs.frozen
    class Sample:
        a: int
        b: str = "b"
        seen: list[int] = attrs.field(factory=list)
        twice: int = attrs.field(default=attrs.Factory(lambda self: self.a * 2,
                                                       takes_self=True))
        _hidden: int = 5  # its parameter is `hidden`
        fixed: int = attrs.field(default=7, init=False)
        late: int = attrs.field(default=0, kw_only=True)
        mode: str = attrs.field(default="m", kw_only=True)

        def __attrs_post_init__(self) -> None:
            self.seen.append(self.twice)  # called last, after every field is set

    return Sample


def test_it_builds_what_attrs_builds() -> None:
    plain, fast = sample(), slot_init(sample())
    assert str(inspect.signature(fast)) == str(inspect.signature(plain))
    for args, kwargs in (((1,), {}), ((2, "x", [3]), {}), ((3,), {"twice": 1, "hidden": 9}),
                         ((4,), {"late": 8, "mode": "q"})):
        expect, got = plain(*args, **kwargs), fast(*args, **kwargs)
        assert attrs.asdict(got) == attrs.asdict(expect), (args, kwargs)
        assert got.fixed == 7 and got.seen[-1] == got.twice
    assert fast(1).seen is not fast(1).seen  # a factory is called each time
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast(1).a = 2  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        fast()  # the required argument is required
    with pytest.raises(TypeError):
        fast(1, late=1, fixed=3)  # init=False stays out of the signature


def test_the_core_values_use_it_and_keep_their_behaviour() -> None:
    for cls in (TaskSpec, NodeSpec, Usage, *get_args(Event), *get_args(Decision)):
        assert cls.__init__.__code__.co_filename.startswith("<slot_init"), cls
    spec = TaskSpec("t1", "llama2:7b", prompt_tokens=100, output_tokens=100)
    assert spec.work > 0 and attrs.evolve(spec, owner="x").work == spec.work
    assert spec == TaskSpec("t1", "llama2:7b", prompt_tokens=100, output_tokens=100)
    assert TaskSpec("t1", "llama2:7b", work=2.0).work == 2.0  # a given work is kept
    assert Assign("t1", "n1", "llama2:7b", 1, 9.0, False) == Assign("t1", "n1", "llama2:7b", 1,
                                                                    9.0, False)
    assert Assign("t1", "n1", "llama2:7b", 1, 9.0, False).verifies is None


def test_it_refuses_what_it_would_not_copy() -> None:
    @attrs.frozen
    class Converted:
        x: int = attrs.field(converter=int)

    @attrs.frozen
    class Checked:
        x: int = attrs.field(validator=attrs.validators.instance_of(int))

    @attrs.frozen(slots=False)
    class NoSlots:
        x: int

    @attrs.frozen
    class PreInit:
        x: int

        def __attrs_pre_init__(self) -> None:
            pass

    for cls in (Converted, Checked, NoSlots, PreInit):
        with pytest.raises(TypeError):
            slot_init(cls)
