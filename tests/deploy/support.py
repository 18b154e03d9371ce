"""Helpers shared by the deployment tests: the CLI and settings the files must agree with, the
Dockerfile and .dockerignore read structurally, and the CI rule for missing tools."""

from __future__ import annotations

import fnmatch
import os
import shlex
from pathlib import Path
from typing import Any, NoReturn

import pytest
import typer.main
import yaml

import service.cli
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCS = ROOT / "docs" / "deployment.md"


def unavailable(reason: str) -> NoReturn:
    """Skip a test that needs a missing tool; with ``CI=true``, fail: CI never skips these."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


# --- the CLI and the settings ------------------------------------------------------------------


def argv(command: str | list[Any]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def cli_group() -> Any:
    return typer.main.get_command(service.cli.app)


def resolve_cli(tokens: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command named by the leading tokens of ``bnsweep ...``, and the words it used."""
    command, path = cli_group(), []
    for token in tokens:
        commands = getattr(command, "commands", None)
        if commands is None or token.startswith("-"):
            break
        assert token in commands, f"`bnsweep {' '.join([*path, token])}`: no such command"
        command = commands[token]
        path.append(token)
    assert path, f"`bnsweep {' '.join(tokens)}` names no command"
    return command, path


def check_bnsweep_argv(args: list[str]) -> None:
    """Fail unless ``bnsweep <args>`` names a command and only options it has."""
    command, path = resolve_cli(args)
    assert not hasattr(command, "commands"), f"`bnsweep {' '.join(path)}` needs a subcommand"
    options = {opt for param in command.params for opt in param.opts}
    for token in args[len(path) :]:
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            assert name in options, f"`bnsweep {' '.join(path)}` has no option {name}"


def settings_env_names() -> set[str]:
    """Every environment variable that sets a field of ``service.settings.Settings``."""
    prefix = Settings.model_config["env_prefix"]
    return {prefix + name.upper() for name in Settings.model_fields}


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process sees with exactly these ``BNSWEEP_*`` variables (and no .env)."""
    with monkeypatch.context() as m:
        for key in list(os.environ):
            if key.startswith("BNSWEEP_"):
                m.delenv(key)
        m.chdir(ROOT / "tests")  # no stray .env
        for key, value in env.items():
            m.setenv(key, value)
        return Settings()


# --- Dockerfile and .dockerignore --------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def exec_form(arguments: str) -> list[str]:
    assert arguments.startswith("["), f"use the exec form (JSON list) for signals: {arguments}"
    return yaml.safe_load(arguments)  # a JSON list is YAML


def dockerignore_patterns() -> list[str]:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "update ignored() for exceptions"
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Enough of .dockerignore's matching for our patterns (no `!` exceptions)."""
    parts = path.split("/")
    for pattern in patterns:
        pattern = pattern.removeprefix("**/").strip("/")
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            return True
        if any(fnmatch.fnmatch(p, pattern) for p in parts) and "/" not in pattern:
            return True
    return False
