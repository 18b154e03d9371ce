"""The one error type of models/: a bad configuration, named by its field path."""

from __future__ import annotations


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
