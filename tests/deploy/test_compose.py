"""Deployment files: Dockerfile, .dockerignore, docker-compose.yml, docs/deployment.md.

What runs without a Docker engine: structural checks (pyyaml + the project's own CLI and
settings): every service and dependency condition is there, every ``bnsweep`` command and option
the files use exists, every ``BNSWEEP_*`` variable is a settings field, the uvicorn factory is
importable and callable without arguments, the Dockerfile's constraints filter really drops the
CPU torch pin, and the example specs land in the image's working directory (COPY, WORKDIR and
.dockerignore read, not built). Then ``docker compose config`` (or Debian's ``docker-compose
config``) validates and renders the compose file; it needs no daemon. Without either tool that
test skips, and with ``CI=true`` it fails.

NOT exercised here, for want of a Docker daemon: building the image (the pip installs, the CUDA
torch wheel, the build-time import check), starting any container (migrate's exit status, the
healthcheck against a live API, depends_on ordering at run time, SIGTERM and stop_grace_period),
and the GPU reservations (the NVIDIA runtime, ``--gpus all`` seeing the devices).
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import import_module
from importlib.metadata import requires, version
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from search import storage
from service.settings import Settings
from tests.deploy.support import (
    DOCKERFILE,
    DOCS,
    ROOT,
    argv,
    check_bnsweep_argv,
    dockerfile_instructions,
    dockerignore_patterns,
    exec_form,
    ignored,
    settings_env_names,
    settings_from_env,
    unavailable,
)

COMPOSE = ROOT / "docker-compose.yml"
REQUIRED_SERVICES = ("postgres", "migrate", "api", "worker")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


# --- helpers -----------------------------------------------------------------------------------


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with every variable unset (the defaults ship in the file)."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the x-* anchors and `<<` merge keys the way Compose does.
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def bnsweep_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services that run the bnsweep image (everything but the database)."""
    return {name: svc for name, svc in services.items() if name != "postgres"}


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends(svc: dict[str, Any]) -> dict[str, str]:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return dict.fromkeys(dep, "service_started")
    return {name: (cond or {}).get("condition", "service_started") for name, cond in dep.items()}


def seconds(duration: str | int | float) -> float:
    """Compose durations: ``90``, ``30s``, ``1m30s``, ``1h``."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- compose: services and their wiring --------------------------------------------------------


def test_required_services_present(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks services {missing}"


def test_postgres_service(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(argv(pg["healthcheck"]["test"]))
    env = environment(pg)
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= env.keys()

    # Data on a named volume, declared at the top level.
    volumes = [str(v).split(":") for v in pg["volumes"]]
    data = [v for v in volumes if v[1] == "/var/lib/postgresql/data"]
    assert data and data[0][0] in (compose.get("volumes") or {}), "pgdata is no named volume"

    # max_connections raised: a process holds 2 pools of at most 2 x pool_size connections.
    match = re.search(r"max_connections=(\d+)", " ".join(argv(pg["command"])))
    assert match, "postgres: raise max_connections (the default 100 fits ~25 worker processes)"
    worker_max = 2 * 2 * storage.WORKER_POOL_SIZE
    api_max = 2 * 2 * Settings().db_pool_size
    assert int(match.group(1)) >= 64 * worker_max + api_max, (
        "max_connections too small for 64 worker processes and the API"
    )


def test_database_url_points_at_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    pg_env = environment(services["postgres"])
    for name, svc in bnsweep_services(services).items():
        url = environment(svc).get("BNSWEEP_DATABASE_URL", "")
        assert url.startswith("postgresql+psycopg://"), f"{name}: psycopg 3 URL expected"
        assert "@postgres:5432/" in url, f"{name}: must reach the postgres service"
        assert url.endswith("/" + pg_env["POSTGRES_DB"])
        assert f"{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}@" in url


def test_migrate_runs_once_after_postgres_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert argv(migrate["command"]) == ["bnsweep", "migrate"]
    assert depends(migrate) == {"postgres": "service_healthy"}
    assert str(migrate.get("restart", "no")) in ("no", "False", "false")


def test_every_bnsweep_service_waits_for_the_schema(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in bnsweep_services(services).items():
        if name != "migrate":
            assert depends(svc).get("migrate") == "service_completed_successfully", name


def test_api_service(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert any(str(p).split(":")[-1].split("/")[0] == "8000" for p in api["ports"])
    check = argv(api["healthcheck"]["test"])
    assert check[0] in ("CMD", "CMD-SHELL")
    joined = " ".join(check)
    assert "/healthz" in joined and ":8000" in joined
    assert "curl" not in joined and "wget" not in joined, "python:3.11-slim has neither"
    assert check[1] == "python" and "urllib" in joined


def test_api_healthcheck_command_is_valid_python(services: dict[str, dict[str, Any]]) -> None:
    check = argv(services["api"]["healthcheck"]["test"])
    code = check[check.index("-c") + 1]
    compile(code, "<healthcheck>", "exec")


def test_worker_service(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert argv(worker["command"])[:2] == ["bnsweep", "worker"]
    assert seconds(worker["stop_grace_period"]) >= 30, "SIGTERM needs time to fail trials cleanly"

    deploy = worker["deploy"]
    assert isinstance(deploy.get("replicas", 1), int)
    devices = deploy["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu["driver"] == "nvidia"
    assert gpu.get("count") in ("all", 1) or gpu.get("device_ids"), gpu
    assert "gpu" in gpu["capabilities"]


@pytest.mark.parametrize("name", ["worker", "worker-cpu"])
def test_workers_are_scalable(services: dict[str, dict[str, Any]], name: str) -> None:
    if name not in services:
        pytest.fail(f"no {name} service")  # worker-cpu is what CPU-only hosts scale
    svc = services[name]
    assert "container_name" not in svc, "a fixed container name blocks --scale"
    assert not svc.get("ports"), "a published host port blocks --scale"
    assert seconds(svc.get("stop_grace_period", "10s")) >= 30


def test_cpu_worker_is_opt_in(services: dict[str, dict[str, Any]]) -> None:
    cpu = services["worker-cpu"]
    assert "cpu" in cpu.get("profiles", []), "must not start next to the GPU workers by default"
    assert "devices" not in (cpu.get("deploy", {}).get("resources", {}).get("reservations", {}))
    assert argv(cpu["command"])[:2] == ["bnsweep", "worker"]


def test_data_volume(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in bnsweep_services(services).items():
        assert environment(svc).get("BNSWEEP_DATA_DIR") == "/data", name
        targets = [str(v).split(":")[1] for v in svc.get("volumes", [])]
        assert "/data" in targets, f"{name}: mount local datasets at /data"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_common_settings_come_from_one_anchor() -> None:
    text = COMPOSE.read_text()
    assert re.search(r"^x-[\w-]+: &", text, re.M), "share the common env through an x- anchor"
    assert text.count("BNSWEEP_DATABASE_URL") == 1, "the database URL is written once"


# --- compose and Dockerfile against the code ---------------------------------------------------


def test_env_vars_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    fields = settings_env_names()
    used = {k for svc in services.values() for k in environment(svc) if k.startswith("BNSWEEP_")}
    used |= set(re.findall(r"\bBNSWEEP_\w+", DOCKERFILE.read_text()))
    assert used, "no BNSWEEP_ settings found"
    unknown = sorted(used - fields)
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"


def test_env_values_parse_as_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, svc in bnsweep_services(services).items():
        settings = settings_from_env(environment(svc), monkeypatch)
        assert settings.auth is True, f"{name}: writes must need an API key"
        assert str(settings.data_dir) == "/data"


def test_cli_in_any_container_reaches_the_api(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docker compose run --rm api bnsweep submit ...`` is a new container: 127.0.0.1 there
    is not the API; the API service's name and container port are."""
    for name, svc in bnsweep_services(services).items():
        url = urlsplit(settings_from_env(environment(svc), monkeypatch).base_url)
        assert url.hostname == "api", f"{name}: BNSWEEP_API_URL should name the api service"
        port = url.port or 80
        api_args = argv(services["api"]["command"])
        assert str(port) == api_args[api_args.index("--port") + 1], f"{name}: not the API's port"


def test_bnsweep_commands_exist(services: dict[str, dict[str, Any]]) -> None:
    used = 0
    for svc in services.values():
        args = argv(svc.get("command") or [])
        if args[:1] == ["bnsweep"]:
            check_bnsweep_argv(args[1:])
            used += 1
    assert used >= 2  # migrate and worker


@pytest.mark.parametrize("subcommand", [["migrate"], ["worker"], ["keys", "create"]])
def test_console_entry_point_help(subcommand: list[str]) -> None:
    """``python -m service`` (the ``bnsweep`` script's code) knows the commands used."""
    done = subprocess.run(
        [sys.executable, "-m", "service", *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_docs_bnsweep_commands_exist() -> None:
    text = DOCS.read_text()
    blocks = re.findall(r"```(?:\w+)?\n(.*?)```", text, re.S)
    found = 0
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True) if line.strip() else []
            for i, token in enumerate(tokens):
                if i and tokens[i - 1] in ("-n", "--namespace"):  # kubectl -n bnsweep ...
                    continue
                if token == "bnsweep" and i + 1 < len(tokens) and tokens[i + 1][:1].isalpha():
                    rest = tokens[i + 1 :]
                    if "|" in rest:
                        rest = rest[: rest.index("|")]
                    check_bnsweep_argv(rest)
                    found += 1
    assert found >= 3


def uvicorn_targets(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    commands = [argv(svc["command"]) for svc in services.values() if svc.get("command")]
    commands.append(exec_form(dict(dockerfile_instructions())["CMD"]))
    return [c for c in commands if c[:1] == ["uvicorn"]]


def test_uvicorn_factory_exists(services: dict[str, dict[str, Any]]) -> None:
    targets = uvicorn_targets(services)
    assert targets, "nothing serves the API"
    for args in targets:
        assert "--factory" in args, "create_app is a factory"
        assert args[args.index("--host") + 1] == "0.0.0.0"
        assert args[args.index("--port") + 1] == "8000"
        app_ref = next(a for a in args[1:] if ":" in a and not a.startswith("-"))
        module, attr = app_ref.split(":")
        factory = getattr(import_module(module), attr)
        required = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        assert not required, f"{app_ref} must be callable without arguments"


def test_uvicorn_factory_builds_from_env(tmp_path: Path) -> None:
    """What uvicorn does in the container: call the factory with settings from the env only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNSWEEP_")}
    env |= {"BNSWEEP_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "BNSWEEP_AUTH": "true"}
    code = "import service.app as a, fastapi; assert isinstance(a.create_app(), fastapi.FastAPI)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_compose_api_runs_the_image_default(services: dict[str, dict[str, Any]]) -> None:
    cmd = exec_form(dict(dockerfile_instructions())["CMD"])
    assert argv(services["api"]["command"]) == cmd


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_base_user_port() -> None:
    instructions = dockerfile_instructions()
    kinds = [k for k, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim") or (
        instructions[0][0] == "ARG" and ("FROM", "python:3.11-slim") in instructions
    )
    assert kinds.count("FROM") == 1
    users = [arg for kind, arg in instructions if kind == "USER"]
    assert users, "run as a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN"), (
        "USER after the last RUN (installs run as root, the service does not)"
    )
    assert any(k == "EXPOSE" and "8000" in a.split() for k, a in instructions)
    assert any(k == "VOLUME" and "/data" in a for k, a in instructions)
    env = " ".join(a for k, a in instructions if k == "ENV")
    assert "BNSWEEP_DATA_DIR=/data" in env
    assert not any(k == "ENTRYPOINT" for k in kinds), "compose runs bnsweep and uvicorn directly"


def test_healthcheck_defined(services: dict[str, dict[str, Any]]) -> None:
    in_dockerfile = any(k == "HEALTHCHECK" for k, _ in dockerfile_instructions())
    assert in_dockerfile or "healthcheck" in services["api"]


def test_dockerfile_installs_cuda_torch_first() -> None:
    instructions = dockerfile_instructions()
    args = dict(a.partition("=")[::2] for k, a in instructions if k == "ARG")
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cu124"
    runs = [a for k, a in instructions if k == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if "--index-url" in r)
    torch_install = r"--index-url \"?\$\{?TORCH_INDEX_URL\}?\"? \"torch>=2\.4,<3\""
    assert re.search(torch_install, runs[torch_run])
    project_run = next(i for i, r in enumerate(runs) if re.search(r"pip install .*-c \S+ \.", r))
    assert torch_run < project_run
    assert "constraints.txt" not in runs[project_run], "the raw constraints pin the CPU torch"


def constraints_filter_run() -> tuple[str, str]:
    """The RUN that writes the image's constraints file, and that file's name."""
    for kind, arguments in dockerfile_instructions():
        if kind == "RUN" and "constraints.txt" in arguments and "grep" in arguments:
            out = re.search(r">\s*([\w./-]+)", arguments)
            assert out
            return arguments, out.group(1)
    raise AssertionError("no RUN derives the image's constraints from constraints.txt")


def test_constraints_filter_drops_the_cpu_torch_pin(tmp_path: Path) -> None:
    """Run the Dockerfile's own filter against this venv's torch (a stand-in for the CUDA one)."""
    script, out_name = constraints_filter_run()
    shutil.copy(ROOT / "constraints.txt", tmp_path / "constraints.txt")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr

    def name(line: str) -> str:
        return re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0].lower().replace("_", "-")

    original = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if "==" in ln]
    result = [ln for ln in (tmp_path / out_name).read_text().splitlines() if ln.strip()]
    torch_deps = {name(r) for r in requires("torch") or [] if "extra ==" not in r}

    assert [ln for ln in result if name(ln) == "torch"] == [f"torch=={version('torch')}"]
    kept = {name(ln) for ln in result}
    assert not kept & torch_deps, "torch's own requirements must be free for a CUDA build"
    expected = {name(ln) for ln in original} - torch_deps
    assert kept == expected, f"pins lost: {sorted(expected - kept)}"
    assert {"optuna", "sqlalchemy", "fastapi", "psycopg"} <= kept

    # Every later install uses that file.
    installs = [a for k, a in dockerfile_instructions() if k == "RUN" and "pip install -c" in a]
    assert installs and all(f"-c {out_name}" in a for a in installs)


def test_dockerfile_smoke_imports_exist() -> None:
    runs = " ".join(a for k, a in dockerfile_instructions() if k == "RUN")
    match = re.search(r'python -c "import ([\w., ]+)"', runs)
    assert match, "the image build should import the entry modules once"
    for module in (m.strip() for m in match.group(1).split(",")):
        if module != "torch":  # never installed into this venv by hand; the trainer needs it
            import_module(module)


def test_dockerignore_keeps_the_build_inputs() -> None:
    patterns = dockerignore_patterns()
    needed = ["pyproject.toml", "constraints.txt", "README.md", "migrations/versions/x.py"]
    needed += [f"{pkg}/__init__.py" for pkg in ("models", "search", "service", "migrations")]
    needed += ["migrations/script.py.mako"]
    assert not [p for p in needed if ignored(p, patterns)]
    for heavy in (".venv/bin/python", ".git/HEAD", "data/cifar/x", "bnsweep.db", "tests/x.py"):
        assert ignored(heavy, patterns), heavy


def image_workdir() -> PurePosixPath:
    """The working directory of the built image: its last WORKDIR, resolved."""
    workdir = PurePosixPath("/")
    for kind, arguments in dockerfile_instructions():
        if kind == "WORKDIR":
            workdir = workdir / arguments
    return workdir


def image_paths(repo_path: str) -> set[PurePosixPath]:
    """Where the Dockerfile leaves ``repo_path`` of the build context in the final image.

    Follows .dockerignore, WORKDIR, COPY from the context (a file or glob, a directory's
    contents, or ``.``) and ``rm -r`` of absolute paths in RUN.
    """
    if ignored(repo_path, dockerignore_patterns()):
        return set()
    workdir, where = PurePosixPath("/"), set()
    for kind, arguments in dockerfile_instructions():
        if kind == "WORKDIR":
            workdir = workdir / arguments
        elif kind == "COPY":
            args = argv(arguments)
            assert not any(a.startswith("--from") for a in args), "update image_paths"
            *sources, dest = [a for a in args if not a.startswith("--")]
            target = workdir / dest
            for source in sources:
                src = source.strip("/").removeprefix("./")
                if src in ("", "."):
                    where.add(target / repo_path)
                elif repo_path.startswith(src + "/"):
                    where.add(target / repo_path.removeprefix(src + "/"))
                elif fnmatch.fnmatch(repo_path, src):
                    single = len(sources) == 1 and not dest.endswith("/") and src == repo_path
                    where.add(target if single else target / PurePosixPath(repo_path).name)
        elif kind == "RUN":
            for removed in re.findall(r"\brm\s+-\w*[rR]\w*\s+(/\S+)", arguments):
                where = {w for w in where if not w.is_relative_to(removed)}
    return where


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_examples_are_in_the_image_working_directory(example: str) -> None:
    """``docker compose run --rm api bnsweep submit examples/<spec>`` finds the file."""
    expected = image_workdir() / "examples" / example
    where = image_paths(f"examples/{example}")
    assert expected in where, f"examples/{example} is in the image at {where or 'no path'}"


def test_image_paths_follow_the_dockerfile() -> None:
    """The checker itself: /src (COPY . .) is removed after the install; tests/ is ignored."""
    assert image_workdir() == PurePosixPath("/app")
    assert image_paths("pyproject.toml") == set()
    assert image_paths("tests/deploy/support.py") == set()


# --- docs ---------------------------------------------------------------------------------------


def test_docs_cover_operations() -> None:
    text = DOCS.read_text()
    for needle in (
        "docker compose up -d --scale worker=",
        "docker compose run --rm api bnsweep keys create",
        "api bnsweep submit examples/mnist1d.yaml",
        "/dashboard",
        "max_connections",
        "--gpus all",
        "BNSWEEP_DATABASE_URL",
        "TORCH_INDEX_URL",
    ):
        assert needle in text, f"docs/deployment.md should mention {needle!r}"


# --- the real Compose, when installed -----------------------------------------------------------


def compose_tool() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("profile", [None, "cpu"])
def test_compose_config_with_docker_compose(tmp_path: Path, profile: str | None) -> None:
    tool = compose_tool()
    if tool is None:
        unavailable("neither `docker compose` nor `docker-compose` (Debian package) is installed")
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.match(r"(COMPOSE_|DOCKER_|POSTGRES_|API_PORT|DATA_DIR|WORKER_|TORCH_)", k)
    }
    env["HOME"] = str(tmp_path)  # no user config; `config` needs no engine
    profiles = ["--profile", profile] if profile else []
    done = subprocess.run(
        [*tool, "-f", str(COMPOSE), "--project-directory", str(ROOT), *profiles, "config"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "WARN" not in done.stderr.upper(), done.stderr
    rendered = yaml.safe_load(done.stdout)
    expected = set(REQUIRED_SERVICES) | ({"worker-cpu"} if profile else set())
    assert expected <= set(rendered["services"])
    worker = rendered["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert (
        rendered["services"]["api"]["depends_on"]["migrate"]["condition"]
        == "service_completed_successfully"
    )
