"""The one error type of models/: a bad configuration, named by its field path."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if the message is empty)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class ConfigError(ValueError):
    """A configuration value that cannot be used.

    Args:
        field: Dotted path of the offending field, e.g. ``"model.params.width"``.
        reason: What is wrong with it, phrased for the user.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownNameError(ConfigError):
    """A model or dataset name that is not registered; lists the known ones."""

    def __init__(self, field: str, kind: str, name: str, known: list[str]) -> None:
        super().__init__(field, f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")
        self.name = name
        self.known = sorted(known)


class DatasetError(ConfigError):
    """A dataset directory that is missing or malformed; names the path and what was expected."""

    def __init__(self, path: str, expected: str, field: str = "dataset.params") -> None:
        super().__init__(field, f"{path}: expected {expected}")
        self.path = path
        self.expected = expected


# --- pydantic's errors, in our words --------------------------------------------------------------

_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}
_TYPES = {
    "int_type": "int",
    "int_from_float": "int",
    "int_parsing": "int",
    "float_type": "float",
    "float_parsing": "float",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "string_type": "str",
    "dict_type": "mapping",
    "mapping_type": "mapping",
    "list_type": "list",
}


def reason_of(error: Any) -> str:
    """One pydantic error (``ValidationError.errors()[i]``) as a reason phrased like ours:
    ``must be >= 1, got 0``."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"must be {op} {ctx[key]}, got {value!r}"
    if kind in _TYPES:
        return f"must be of type {_TYPES[kind]}, got {value!r}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("enum", "literal_error"):
        return f"must be one of {ctx.get('expected', '')}, got {value!r}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}, got {value!r}"
    if kind == "string_too_short":
        return f"must be at least {ctx['min_length']} character(s) long"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters long"
    if kind == "missing":
        return "is required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown field"
    return str(error["msg"]).removeprefix("Value error, ")


def config_error(exc: ValidationError, prefix: str) -> ConfigError:
    """The first error of a pydantic validation as a ConfigError under the field path ``prefix``."""
    error = exc.errors()[0]
    path = ".".join([prefix, *(str(p) for p in error["loc"])]) if prefix else ""
    return ConfigError(path or ".".join(str(p) for p in error["loc"]) or "value", reason_of(error))
