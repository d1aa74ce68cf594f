"""Typed settings from plain data: a YAML/JSON mapping turned into a settings dataclass with every
value checked against the field's type, so a string where a list belongs or a word where a number
belongs is reported with the setting's name instead of failing later (or being read letter by
letter). Standard library only: recipes, studies and feature configs all use it.
"""
from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any

from .errors import PolypruneError


# --------------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(tp, getattr(tp, "__name__", str(tp)))


def check_value(value, tp, name: str, where: str):
    """``value`` converted to ``tp`` (ints to floats only), or a PolypruneError naming ``name``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(value, a, name, where)
            except PolypruneError as e:
                errors.append(e)
        raise errors[0]
    bad = PolypruneError(f"Setting {name!r} in the {where} is {value!r}, not {_type_name(tp)}",
                         f"write {name} as {_type_name(tp)}" + (", e.g. [eng_Latn, fra_Latn]" if origin is list else ""))
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (inner,) = typing.get_args(tp) or (Any,)
        return [check_value(v, inner, f"{name}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return settings_from_dict(tp, value, f"section {name!r} of the {where}")
    return value


def settings_from_dict(cls, d: Any, where: str, kind: str = ""):
    """An instance of the settings dataclass ``cls`` from a mapping, every value type-checked.

    ``kind`` names the settings in messages (``"Unknown evaluation setting 'x' in the study"``).

    Raises:
        PolypruneError: not a mapping, an unknown key (the known ones are listed), or a value of
            the wrong type (the setting is named).
    """
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise PolypruneError(f"The {where} is not a mapping of settings", "write key: value pairs (YAML) or a JSON object")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    bad = sorted(set(map(str, d)) - known)
    if bad:
        raise PolypruneError(f"Unknown {kind + ' ' if kind else ''}setting{'s' if len(bad) > 1 else ''} "
                             f"{', '.join(map(repr, bad))} in the {where}", f"known settings: {', '.join(sorted(known))}")
    return cls(**{k: check_value(v, hints[k], k, where) for k, v in d.items()})
