# A cheaper __init__ for the core's frozen attrs values (events.py): the same
# signature and the same result, each slot set through its member descriptor.
#
# Why: the core builds several frozen values for every task (its TaskSpec, the
# events that carry it, the decisions that answer), and attrs' frozen __init__
# sets each field with `object.__setattr__(self, name, value)`, which looks the
# name up on the type again for every field. Calling the slot's own descriptor
# (`Cls.field.__set__`, bound once when the class is made) skips that lookup:
# 15,444 instead of 18,143 instructions to build a TaskSpec of 12 fields
# (callgrind, hash seed 0, the difference of a 1,000- and a 21,000-spec run).
#
# Rules:
# - The generated __init__ is attrs' own, field for field: the same parameters
#   (by alias, keyword-only ones after `*`), the same defaults, factories called in
#   field order (a `takes_self` factory sees the fields before it), fields with
#   `init=False` set from their default, `__attrs_post_init__` called last.
# - It refuses (TypeError, when the class is made) what it does not reproduce: a
#   converter, a validator, `__attrs_pre_init__`, a class without slots, a field
#   without a default after `init=False`. Frozenness is unchanged: the descriptor
#   bypasses the frozen __setattr__ exactly as `object.__setattr__` does.
# - Equality, hashing, repr and `attrs.evolve` stay attrs' (evolve calls __init__).
# Cost: O(fields) once per class, at import.
from __future__ import annotations

from typing import Any, Callable, TypeVar

import attrs

T = TypeVar("T")


def slot_init(cls: type[T]) -> type[T]:
    """Give an attrs class with slots the descriptor-setting __init__ (see above)."""
    if getattr(cls, "__attrs_attrs__", None) is None or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: slot_init needs an attrs class with slots")
    if hasattr(cls, "__attrs_pre_init__"):
        raise TypeError(f"{cls.__name__}: slot_init does not call __attrs_pre_init__")
    namespace: dict[str, Any] = {"NOTHING": attrs.NOTHING}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for field in attrs.fields(cls):  # type: ignore[arg-type]  # checked above
        name = field.name
        if field.converter is not None or field.validator is not None:
            raise TypeError(f"{cls.__name__}.{name}: slot_init supports no converter "
                            "or validator")
        namespace[f"set_{name}"] = getattr(cls, name).__set__
        default = field.default
        factory = isinstance(default, attrs.Factory)  # type: ignore[arg-type]
        fallback: str | None  # the expression of the field's default, if it has one
        if factory:
            namespace[f"make_{name}"] = default.factory
            fallback = f"make_{name}(self)" if default.takes_self else f"make_{name}()"
        elif default is not attrs.NOTHING:
            namespace[f"default_{name}"] = default
            fallback = f"default_{name}"
        else:
            fallback = None
        if not field.init:
            if fallback is None:
                raise TypeError(f"{cls.__name__}.{name}: init=False without a default")
            body.append(f"set_{name}(self, {fallback})")
            continue
        parameter = field.alias or name
        if fallback is None:
            signature = value = parameter
        elif factory:
            signature = f"{parameter}=NOTHING"
            value = f"{fallback} if {parameter} is NOTHING else {parameter}"
        else:
            signature, value = f"{parameter}={fallback}", parameter
        (keyword if field.kw_only else positional).append(signature)
        body.append(f"set_{name}(self, {value})")
    if hasattr(cls, "__attrs_post_init__"):
        body.append("self.__attrs_post_init__()")
    parameters = ["self", *positional, *(["*", *keyword] if keyword else [])]
    source = (f"def __init__({', '.join(parameters)}):\n"
              + "".join(f"    {line}\n" for line in body or ["pass"]))
    exec(compile(source, f"<slot_init {cls.__qualname__}>", "exec"), namespace)
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


__all__ = ["slot_init"]
