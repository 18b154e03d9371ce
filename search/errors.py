"""The error type of search/: an invalid study spec, named by its field path."""

from __future__ import annotations

from models.errors import ConfigError


class SpecError(ConfigError):
    """A study spec that cannot be run.

    Example: ``SpecError("search_space.batch_size.low", "must be >= 1")``.

    It is a ConfigError, so the HTTP layer (422) and the CLI (exit 2) map both in one place.
    """


class StudyNotFoundError(LookupError):
    """No study with that id or name."""


class StudyStateError(RuntimeError):
    """The study's status forbids the operation (e.g. deleting a running study)."""


class NotFoundError(LookupError):
    """Something other than a study is missing (e.g. no best trial yet)."""
