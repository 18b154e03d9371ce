"""Kubernetes manifests: deploy/kubernetes (kustomize), docs/deployment.md's Kubernetes section.

No cluster is needed. ``build()`` reads each kustomization with pyyaml the way ``kustomize build``
would for the features used here (resources, components, configMapGenerator, namespace, images;
any other key fails the test until ``build()`` learns it). Every resulting object, and the
example Secrets, is validated against the Kubernetes JSON schemas (``kubernetes-validate``,
strict: unknown fields fail) of the oldest and newest versions in ``K8S_VERSIONS``. Then the facts
that make bnsweep run: every ``bnsweep`` command and option exists in the CLI, every
``BNSWEEP_*`` variable is a settings field and the values parse, the probes hit ``/healthz`` on
the API's port, the GPU worker requests ``nvidia.com/gpu``, one image everywhere, Secrets only as
placeholders, and the schema-wait script really tells a migrated database from one that is not.
``kubectl kustomize`` (or ``kustomize build``) also renders both entry points; without either
tool that test skips, and with ``CI=true`` it fails.

NOT exercised: a cluster (scheduling, GPU nodes and the NVIDIA device plugin, PVC provisioning,
probes against a live pod, the Job's retries, SIGTERM within terminationGracePeriodSeconds).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

import migrations
from search import storage
from service.api.system import ops
from service.settings import Settings
from tests.deploy.support import (
    DOCS,
    ROOT,
    argv,
    check_bnsweep_argv,
    dockerfile_instructions,
    exec_form,
    settings_env_names,
    settings_from_env,
    unavailable,
)

K8S = ROOT / "deploy" / "kubernetes"
ENTRY_POINTS = {"in-cluster-postgres": K8S, "external-db": K8S / "external-db"}
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"
SCHEMA_SCRIPT = K8S / "app" / "schema_ready.py"
K8S_VERSIONS = ("1.30", "1.37")
PLACEHOLDER = "CHANGE-ME"
BUILD_KEYS = {"apiVersion", "kind", "namespace", "resources", "components"}
BUILD_KEYS |= {"configMapGenerator", "images"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")


# --- a small kustomize -------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def retag(image: str, rule: dict[str, str]) -> str:
    """kustomize's ``images`` transformer for one image reference."""
    name, _, tag = image.partition(":")
    if name != rule["name"]:
        return image
    tag = rule.get("newTag", tag)
    return rule.get("newName", name) + (f":{tag}" if tag else "")


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` emits, ConfigMaps without their hash suffix."""
    k = kustomization(directory)
    unknown = set(k) - BUILD_KEYS
    assert not unknown, f"{directory}: teach build() about {sorted(unknown)}"
    objects: list[dict[str, Any]] = []
    listed = [("Kustomization", e) for e in k.get("resources", [])]
    listed += [("Component", e) for e in k.get("components", [])]
    for kind, entry in listed:
        path = directory / entry
        if path.is_dir():
            assert kustomization(path)["kind"] == kind, f"{path}: listed as a {kind}"
            objects += build(path)
        else:
            assert kind == "Kustomization", f"{path}: a component must be a directory"
            objects += yaml_documents(path)
    for generator in k.get("configMapGenerator", []):
        data = dict(literal.split("=", 1) for literal in generator.get("literals", []))
        data |= {Path(f).name: (directory / f).read_text() for f in generator.get("files", [])}
        meta = {"name": generator["name"]}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    for obj in objects:
        if "namespace" in k:
            obj["metadata"]["namespace"] = k["namespace"]
        for container in containers(obj):
            for rule in k.get("images", []):
                container["image"] = retag(container["image"], rule)
    return objects


def key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def all_objects() -> dict[str, dict[str, Any]]:
    """Every object of every entry point, and the example Secrets, by kind/name."""
    found = {key(obj): obj for objects in BUILDS.values() for obj in objects}
    return found | {key(obj): obj for obj in EXAMPLE_SECRETS}


def find(kind: str, name: str, objects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    objects = BUILDS["in-cluster-postgres"] if objects is None else objects
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"] if obj["kind"] in WORKLOADS else {}


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(obj)
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def main_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(obj)["containers"]
    return container


def bnsweep_image() -> str:
    (rule,) = kustomization(K8S / "app")["images"]
    return rule["name"]


def is_bnsweep(container: dict[str, Any]) -> bool:
    return container["image"].partition(":")[0] == bnsweep_image()


def bnsweep_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        for container in containers(obj):
            if is_bnsweep(container):
                yield f"{key(obj)}:{container['name']}", container


def resolved_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment, ConfigMaps from ``objects``, Secrets from the examples."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= find("ConfigMap", source["configMapRef"]["name"], objects)["data"]
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            secret = find("Secret", ref["name"], EXAMPLE_SECRETS)
            env[var["name"]] = secret["stringData"][ref["key"]]
    return env


def secret_refs(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    refs = set()
    for obj in objects:
        for container in containers(obj):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    return refs


BUILDS = {name: build(path) for name, path in ENTRY_POINTS.items()}
EXAMPLE_SECRETS = yaml_documents(SECRETS_EXAMPLE)


# --- kustomize structure -----------------------------------------------------------------------


def test_every_manifest_is_listed_once() -> None:
    """No manifest lies around unused; the example Secrets are in no kustomization."""
    listed: list[Path] = []
    for path in K8S.rglob("kustomization.yaml"):
        k = kustomization(path.parent)
        listed += [(path.parent / e).resolve() for e in k.get("resources", [])]
        for generator in k.get("configMapGenerator", []):
            listed += [(path.parent / f).resolve() for f in generator.get("files", [])]
    files = [p.resolve() for p in K8S.rglob("*") if p.is_file()]
    files = [p for p in files if p.name != "kustomization.yaml" and p != SECRETS_EXAMPLE]
    listed = [p for p in listed if p.is_file()]  # directories: bases used by several
    assert sorted(files) == sorted(listed), "each file listed by exactly one kustomization"


def test_entry_points() -> None:
    built = {name: sorted(key(o) for o in objects) for name, objects in BUILDS.items()}
    database = {"Service/bnsweep-postgres", "StatefulSet/bnsweep-postgres"}
    app = {
        "ConfigMap/bnsweep-env",
        "ConfigMap/bnsweep-scripts",
        "Job/bnsweep-migrate",
        "Deployment/bnsweep-api",
        "Service/bnsweep-api",
        "Deployment/bnsweep-worker-gpu",
        "Deployment/bnsweep-worker-cpu",
    }
    assert built["in-cluster-postgres"] == sorted(app | database)
    assert built["external-db"] == sorted(app)
    for objects in BUILDS.values():
        assert {o["metadata"]["namespace"] for o in objects} == {"bnsweep"}
        assert not [key(o) for o in objects if o["kind"] == "Secret"], "Secrets are yours"


# --- Kubernetes schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(all_objects()))
def test_schema(name: str, version: str) -> None:
    kubernetes_validate.validate(all_objects()[name], version, strict=True)


def test_schema_validation_can_fail() -> None:
    """The validator is strict: a misspelt field or a wrong type is an error."""
    api = copy.deepcopy(find("Deployment", "bnsweep-api"))
    main_container(api)["readinessProbe"]["httpGet"]["pathh"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSIONS[-1], strict=True)
    job = copy.deepcopy(find("Job", "bnsweep-migrate"))
    job["spec"]["backoffLimit"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


# --- bnsweep: commands, settings, image --------------------------------------------------------


def test_bnsweep_commands_exist() -> None:
    commands = {
        name: argv(c["command"])
        for name, c in bnsweep_containers(BUILDS["in-cluster-postgres"])
        if argv(c.get("command", []))[:1] == ["bnsweep"]
    }
    for args in commands.values():
        check_bnsweep_argv(args[1:])
    assert commands == {
        "Job/bnsweep-migrate:migrate": ["bnsweep", "migrate"],
        "Deployment/bnsweep-worker-gpu:worker": ["bnsweep", "worker", "--gpus", "all"],
        "Deployment/bnsweep-worker-cpu:worker": ["bnsweep", "worker", "--device", "cpu"],
    }


def test_api_runs_the_image_default() -> None:
    api = main_container(find("Deployment", "bnsweep-api"))
    assert argv(api["command"]) == exec_form(dict(dockerfile_instructions())["CMD"])
    assert "args" not in api


def test_env_vars_are_settings_fields() -> None:
    objects = BUILDS["in-cluster-postgres"]
    used = {
        name
        for _, container in bnsweep_containers(objects)
        for name in resolved_env(container, objects)
        if name.startswith("BNSWEEP_")
    }
    assert {"BNSWEEP_DATABASE_URL", "BNSWEEP_AUTH", "BNSWEEP_DATA_DIR"} <= used
    unknown = sorted(used - settings_env_names())
    assert not unknown, f"not fields of service.settings.Settings: {unknown}"


def test_env_values_parse_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for objects in BUILDS.values():
        for name, container in bnsweep_containers(objects):
            env = {
                k: v
                for k, v in resolved_env(container, objects).items()
                if k.startswith("BNSWEEP_")
            }
            settings = settings_from_env(env, monkeypatch)  # grace >= 2 heartbeats is checked
            assert settings.auth is True, f"{name}: writes must need an API key"
            assert str(settings.data_dir) == "/data", name
            assert settings.database_url.startswith("postgresql+psycopg://"), name
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            if name.endswith((":api", ":worker")):
                assert mounts["/data"].get("readOnly") is True, f"{name}: mount datasets at /data"


def test_database_url_only_from_the_secret() -> None:
    for objects in BUILDS.values():
        for name, container in bnsweep_containers(objects):
            (var,) = [v for v in container.get("env", []) if v["name"] == "BNSWEEP_DATABASE_URL"]
            assert var["valueFrom"]["secretKeyRef"] == {"name": "bnsweep-database", "key": "url"}
            for source in container.get("envFrom", []):
                data = find("ConfigMap", source["configMapRef"]["name"], objects)["data"]
                assert "BNSWEEP_DATABASE_URL" not in data, name


def service_link_names(service: str, ports: list[dict[str, Any]]) -> set[str]:
    """The variables Kubernetes injects for a Service when ``enableServiceLinks`` is on."""
    prefix = service.upper().replace("-", "_")
    names = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    for port in ports:
        proto = port.get("protocol", "TCP")
        base = f"{prefix}_PORT_{port['port']}_{proto}"
        names |= {base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"}
        if "name" in port:
            names.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
    return names


def test_service_links_cannot_set_settings() -> None:
    """A Service named ``bnsweep`` would inject BNSWEEP_PORT=tcp://...: Settings would fail."""
    assert "BNSWEEP_PORT" in service_link_names("bnsweep", [{"port": 8000}])
    objects = BUILDS["in-cluster-postgres"]
    for service in (o for o in objects if o["kind"] == "Service"):
        injected = service_link_names(service["metadata"]["name"], service["spec"]["ports"])
        assert not injected & settings_env_names(), key(service)
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            assert pod_spec(obj).get("enableServiceLinks") is False, key(obj)


def test_one_image_everywhere() -> None:
    """Every bnsweep container runs the kustomization's image, the one compose builds."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images: set[str] = set()
    for path in (K8S / "app").glob("*.yaml"):
        for obj in yaml_documents(path):
            images |= {c["image"] for c in containers(obj)}
    assert images == {compose["x-bnsweep"]["image"]}, "the raw manifests name compose's image"
    for objects in BUILDS.values():
        built = {c["image"] for _, c in bnsweep_containers(objects)}
        assert len(built) == 1, built
        pulls = {c.get("imagePullPolicy") for _, c in bnsweep_containers(objects)}
        assert pulls == {"IfNotPresent"}
    postgres = main_container(find("StatefulSet", "bnsweep-postgres"))
    assert postgres["image"] == compose["services"]["postgres"]["image"]


def test_pods_run_as_the_image_user() -> None:
    runs = " ".join(a for k, a in dockerfile_instructions() if k == "RUN")
    match = re.search(r"useradd .*--uid (\d+)", runs)
    assert match, "the Dockerfile creates its user with a fixed uid"
    for obj in BUILDS["in-cluster-postgres"]:
        if obj["kind"] in WORKLOADS:
            security = pod_spec(obj)["securityContext"]
            assert security["runAsNonRoot"] is True, key(obj)
            if any(is_bnsweep(c) for c in containers(obj)):
                assert security["runAsUser"] == int(match.group(1)), key(obj)
            for container in containers(obj):
                assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- API ---------------------------------------------------------------------------------------


def test_api_probes_hit_healthz() -> None:
    assert "/healthz" in {route.path for route in ops.routes}, "the app serves no /healthz"
    api = main_container(find("Deployment", "bnsweep-api"))
    args = argv(api["command"])
    port = int(args[args.index("--port") + 1])
    assert port in {p["containerPort"] for p in api["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = api[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert get["port"] == port, probe
    # A database outage must not restart the API before readiness has taken it out of service.
    ready, live = api["readinessProbe"], api["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > (
        ready["periodSeconds"] * ready["failureThreshold"]
    )


def test_api_service_selects_only_api_pods() -> None:
    service = find("Service", "bnsweep-api")
    selector = service["spec"]["selector"]
    for obj in BUILDS["in-cluster-postgres"]:
        if obj["kind"] in WORKLOADS:
            labels = obj["spec"]["template"]["metadata"]["labels"]
            selected = selector.items() <= labels.items()
            assert selected == (key(obj) == "Deployment/bnsweep-api"), key(obj)
            if obj["kind"] != "Job":
                assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
    api = main_container(find("Deployment", "bnsweep-api"))
    (port,) = service["spec"]["ports"]
    (container_port,) = api["ports"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
    assert port["port"] == container_port["containerPort"] == 8000


# --- workers and the migration -----------------------------------------------------------------


def test_gpu_worker() -> None:
    worker = find("Deployment", "bnsweep-worker-gpu")
    container = main_container(worker)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    requests = container["resources"].get("requests", {})
    assert int(requests.get("nvidia.com/gpu", 1)) == 1, "GPU requests must equal limits"
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 60
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "no pod waits for a GPU"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(worker)["tolerations"])
    assert worker["spec"]["replicas"] >= 1


def test_cpu_worker_is_off_by_default() -> None:
    worker = find("Deployment", "bnsweep-worker-cpu")
    container = main_container(worker)
    assert worker["spec"]["replicas"] == 0
    assert "nvidia.com/gpu" not in str(worker)
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 60
    threads = {v["name"]: v for v in container["env"]}["OMP_NUM_THREADS"]["valueFrom"]
    assert threads["resourceFieldRef"]["containerName"] == container["name"]
    section, resource = threads["resourceFieldRef"]["resource"].split(".")
    assert resource == "cpu" and container["resources"][section]["cpu"], "threads = the pod's CPUs"


def test_pods_wait_for_the_schema_the_job_creates() -> None:
    """Every bnsweep pod but the Job's loops on schema_ready.py, mounted from its ConfigMap."""
    objects = BUILDS["in-cluster-postgres"]
    job = find("Job", "bnsweep-migrate")
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 3, "PostgreSQL may still be starting"
    assert "initContainers" not in pod_spec(job)
    waiting = 0
    for obj in objects:
        if obj["kind"] != "Deployment" or not any(is_bnsweep(c) for c in containers(obj)):
            continue
        (init,) = pod_spec(obj)["initContainers"]
        script = re.fullmatch(r"until python (\S+); do sleep \d+; done", argv(init["command"])[-1])
        assert script, f"{key(obj)}: the init container loops on the schema check"
        path = Path(script.group(1))
        (mount,) = [m for m in init["volumeMounts"] if path.parent == Path(m["mountPath"])]
        (volume,) = [v for v in pod_spec(obj)["volumes"] if v["name"] == mount["name"]]
        data = find("ConfigMap", volume["configMap"]["name"], objects)["data"]
        assert data[path.name] == SCHEMA_SCRIPT.read_text()
        waiting += 1
    assert waiting == 3  # the API and both workers


def run_schema_check(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the init containers' check as they do: a fresh process, settings from the env only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNSWEEP_")}
    env["BNSWEEP_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, str(SCHEMA_SCRIPT)], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_schema_check_tells_migrated_from_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bnsweep.db'}"
    before = run_schema_check(url, tmp_path)
    assert before.returncode == 1, before.stderr
    assert "waiting for" in before.stderr and "Traceback" not in before.stderr
    migrations.upgrade(url)
    after = run_schema_check(url, tmp_path)
    assert after.returncode == 0, after.stderr
    down = run_schema_check("postgresql+psycopg://bnsweep:s3cret@127.0.0.1:9/bnsweep", tmp_path)
    assert down.returncode == 1
    assert down.stderr.startswith("database not ready") and "Traceback" not in down.stderr
    assert "s3cret" not in down.stdout + down.stderr


# --- PostgreSQL and Secrets --------------------------------------------------------------------


def test_in_cluster_postgres() -> None:
    db = find("StatefulSet", "bnsweep-postgres")
    service = find("Service", "bnsweep-postgres")
    assert db["spec"]["serviceName"] == service["metadata"]["name"]
    assert (
        service["spec"]["selector"].items() <= db["spec"]["template"]["metadata"]["labels"].items()
    )
    container = main_container(db)
    (claim,) = db["spec"]["volumeClaimTemplates"]
    env = {v["name"]: v for v in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert env["PGDATA"]["value"].startswith(mount["mountPath"] + "/"), "data on the claim"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "bnsweep-postgres"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 5432
    assert port["targetPort"] in {p.get("name") for p in container["ports"]} | {5432}
    match = re.search(r"max_connections=(\d+)", " ".join(argv(container["args"])))
    assert match, "raise max_connections (the default 100 fits ~25 worker processes)"
    worker_max = 2 * 2 * storage.WORKER_POOL_SIZE
    assert int(match.group(1)) >= 64 * worker_max + 2 * 2 * Settings().db_pool_size
    assert "pg_isready" in argv(container["readinessProbe"]["exec"]["command"])

    # The example URL reaches this Service as this database's user, with the same password.
    url = urlsplit(find("Secret", "bnsweep-database", EXAMPLE_SECRETS)["stringData"]["url"])
    assert (url.hostname, url.port) == (service["metadata"]["name"], port["port"])
    assert url.username == env["POSTGRES_USER"]["value"]
    assert url.path == "/" + env["POSTGRES_DB"]["value"]
    password = find("Secret", "bnsweep-postgres", EXAMPLE_SECRETS)["stringData"]["password"]
    assert url.password == password


def test_secrets_are_placeholders_for_every_reference() -> None:
    provided = set()
    for secret in EXAMPLE_SECRETS:
        assert secret["kind"] == "Secret" and "data" not in secret, "stringData only"
        for name, value in secret["stringData"].items():
            assert PLACEHOLDER in value, f"{key(secret)}.{name}: a placeholder, never a password"
            provided.add((secret["metadata"]["name"], name))
    for objects in BUILDS.values():
        assert secret_refs(objects) <= provided
    assert secret_refs(BUILDS["external-db"]) == {("bnsweep-database", "url")}


def test_no_credentials_in_manifests() -> None:
    for obj in all_objects().values():
        if obj["kind"] == "Secret":
            continue
        for container in containers(obj):
            for var in container.get("env", []):
                value = str(var.get("value", ""))
                assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{key(obj)}: {var}"
                if re.search(r"PASSWORD|SECRET|TOKEN|KEY", var["name"]):
                    assert "valueFrom" in var, f"{key(obj)}: {var['name']} from a Secret"
        if obj["kind"] == "ConfigMap":
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(obj["data"])), key(obj)


# --- kustomize itself, docs --------------------------------------------------------------------


def kustomize_tool() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_kustomize_renders_what_build_reads(entry: str) -> None:
    tool = kustomize_tool()
    if tool is None:
        unavailable("neither `kubectl` (kubectl kustomize) nor `kustomize` is installed")
    done = subprocess.run(
        [*tool, str(ENTRY_POINTS[entry])], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    config_maps = {}
    for obj in rendered:
        if obj["kind"] == "ConfigMap":  # generated: name-<hash>
            base = obj["metadata"]["name"].rsplit("-", 1)[0]
            config_maps[obj["metadata"]["name"]] = base
            obj["metadata"]["name"] = base
    # References were rewritten to the hashed names, and the rest is what build() read.
    for obj in rendered:
        for container in containers(obj):
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]
                ref["name"] = config_maps[ref["name"]]
        for volume in pod_spec(obj).get("volumes", []):
            if "configMap" in volume:
                volume["configMap"]["name"] = config_maps[volume["configMap"]["name"]]
    by_key = {key(o): o for o in BUILDS[entry]}
    assert sorted(by_key) == sorted(key(o) for o in rendered)
    for obj in rendered:
        assert obj == by_key[key(obj)], key(obj)


def test_docs_cover_kubernetes() -> None:
    text = DOCS.read_text()
    for needle in (
        "kubectl apply -k deploy/kubernetes",
        "kubectl apply -k deploy/kubernetes/external-db",
        "nvidia.com/gpu",
        "/healthz",
        "scale deploy/bnsweep-worker-gpu",
        "scale deploy/bnsweep-worker-cpu",
        "delete job bnsweep-migrate",
    ):
        assert needle in text, f"docs/deployment.md should mention {needle!r}"
    # Every Secret the manifests read is created in the docs, with the keys they read.
    for name, secret_key in secret_refs(BUILDS["in-cluster-postgres"]):
        pattern = (
            rf"create secret generic {name}\b[^\n]*(?:\\\n[^\n]*)*--from-literal={secret_key}="
        )
        assert re.search(pattern, text), f"docs: how to create {name} with key {secret_key}"
    # Objects the docs name exist.
    names = {(o["kind"], o["metadata"]["name"]) for o in BUILDS["in-cluster-postgres"]}
    kinds = {"deploy": "Deployment", "svc": "Service", "job": "Job", "statefulset": "StatefulSet"}
    for short, name in re.findall(r"\b(deploy|svc|job|statefulset)/(bnsweep[\w-]*)", text):
        assert (kinds[short], name) in names, f"docs name {short}/{name}"
