"""Static checks of docker-compose.yml and the Dockerfile: no Docker engine, no network, no database.

The compose file is validated against the compose-spec JSON schema that check-jsonschema vendors
(``--builtin-schema vendor.compose-spec``), then the values that keep a deployment safe and working
are asserted one by one: a schema cannot know that a grading worker must not hold database
credentials.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_SERVICES = {"postgres", "redis", "web", "worker-portal", "worker-cpu", "worker-gpu"}
GRADING_WORKERS = ("worker-cpu", "worker-gpu")
PORTAL_SERVICES = ("web", "worker-portal")
# Anything that would let a grading worker (which runs untrusted code) reach the database or
# forge sessions.
# Overridable from .env (a password, another host); the default points at the compose service.
REDIS_URL_IN_COMPOSE = "${REDIS_URL:-redis://redis:6379/0}"
SECRET_ENV_NAMES = {"DATABASE_URL", "SECRET_KEY", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def _yaml() -> YAML:
    return YAML(typ="safe", pure=True)


def validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """Run check-jsonschema with its vendored compose-spec schema; never fetches anything."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def environment(service: dict) -> dict[str, str | None]:
    """A service's environment as a dict, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return dict(env)
    pairs = (item.split("=", 1) for item in env)
    return {pair[0]: (pair[1] if len(pair) == 2 else None) for pair in pairs}


def command_line(service: dict) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else " ".join(command)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml().load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


# --- schema ------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema():
    result = validate_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def _set(mapping: dict, key: str, value) -> None:
    mapping[key] = value


@pytest.mark.parametrize(
    ("what", "mutate", "error"),
    [
        (
            "ports given as a string, not a list",
            lambda s: _set(s["web"], "ports", "8000:8000"),
            "services.web.ports: '8000:8000' is not of type 'array'",
        ),
        (
            "healthcheck retries given as a list",
            lambda s: _set(s["redis"]["healthcheck"], "retries", [3]),
            "services.redis.healthcheck.retries",
        ),
        (
            "misspelt healthcheck key",
            lambda s: _set(s["web"], "healthchek", s["web"].pop("healthcheck")),
            "'healthchek' was unexpected",
        ),
        (
            "GPU reservation without capabilities",
            lambda s: s["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities"),
            "'capabilities' is a required property",
        ),
    ],
)
def test_validator_rejects_a_broken_compose_file(compose: dict, tmp_path: Path, what: str, mutate, error: str):
    """The schema check can fail: one mistake in an otherwise valid copy of our file is caught."""
    broken = copy.deepcopy(compose)
    mutate(broken["services"])
    path = tmp_path / "docker-compose.yml"
    with path.open("w") as fh:
        _yaml().dump(broken, fh)

    result = validate_compose(path)

    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{what}: accepted\n{output}"
    assert "Schema validation errors were encountered" in output, output
    assert error in output, output


def test_compose_file_has_no_obsolete_version_key(compose: dict):
    assert "version" not in compose


# --- services ----------------------------------------------------------------------------------


def test_all_services_are_defined(services: dict):
    assert set(services) == EXPECTED_SERVICES


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES))
def test_every_service_has_a_healthcheck(services: dict, name: str):
    healthcheck = services[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable", False)
    test = healthcheck["test"]
    assert test and (test[0] in {"CMD", "CMD-SHELL"} if isinstance(test, list) else test.strip())


def test_healthchecks_escape_dollars_for_compose(services: dict):
    """A lone ``$`` is interpolated by compose on the host, not by the container's shell."""
    lone_dollar = re.compile(r"(?<!\$)\$(?!\$)")
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        text = test if isinstance(test, str) else " ".join(test)
        assert not lone_dollar.search(text), f"{name}: unescaped $ in healthcheck {text!r}"


@pytest.mark.parametrize(
    ("name", "app"),
    [("web", None), ("worker-portal", "portal"), *((w, "gpu_runner") for w in GRADING_WORKERS)],
)
def test_app_healthchecks_probe_the_right_process(services: dict, name: str, app: str | None):
    test = services[name]["healthcheck"]["test"]
    text = test if isinstance(test, str) else " ".join(test)
    if app is None:
        assert "http://127.0.0.1:8000/healthz" in text and "urllib" in text
    else:
        assert f"celery -A {app} inspect ping" in text
        assert "-d celery@$$HOSTNAME" in text


def test_web_waits_for_healthy_postgres_and_redis(services: dict):
    depends_on = services["web"]["depends_on"]
    assert isinstance(depends_on, dict), "use the long form so the condition is explicit"
    for dependency in ("postgres", "redis"):
        assert depends_on[dependency]["condition"] == "service_healthy"
    assert [str(port).rsplit(":", 1)[-1] for port in services["web"]["ports"]] == ["8000"]


def test_stateful_services_use_pinned_major_versions_and_volumes(services: dict):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_app_services_share_one_image(services: dict):
    app_services = [*PORTAL_SERVICES, *GRADING_WORKERS]
    assert len({services[name]["image"] for name in app_services}) == 1
    assert all(services[name]["build"]["context"] == "." for name in app_services)


def test_portal_services_get_database_and_redis(services: dict):
    for name in PORTAL_SERVICES:
        env = environment(services[name])
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == REDIS_URL_IN_COMPOSE
        assert {"SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"} <= set(env)


def test_portal_worker_runs_the_portal_queue_with_beat(services: dict):
    command = command_line(services["worker-portal"])
    assert command.startswith("celery -A portal worker")
    assert "-Q portal" in command and " -B" in command


@pytest.mark.parametrize("name", GRADING_WORKERS)
def test_grading_workers_hold_no_database_credentials(services: dict, name: str):
    service = services[name]
    env = environment(service)
    assert env.get("REDIS_URL") == REDIS_URL_IN_COMPOSE
    assert not SECRET_ENV_NAMES & set(env), f"{name} must not see {SECRET_ENV_NAMES & set(env)}"
    assert "env_file" not in service, f"{name}: an env_file could smuggle in database credentials"
    assert "postgres" not in (service.get("depends_on") or {})


@pytest.mark.parametrize(("name", "queue", "concurrency"), [("worker-cpu", "cpu", 2), ("worker-gpu", "gpu", 1)])
def test_grading_workers_consume_their_queue_one_job_at_a_time(services: dict, name: str, queue: str, concurrency: int):
    command = command_line(services[name])
    assert command.startswith("celery -A gpu_runner worker")
    assert f"-Q {queue}" in command
    assert f"--concurrency={concurrency}" in command
    assert "--prefetch-multiplier=1" in command


@pytest.mark.parametrize("name", GRADING_WORKERS)
def test_grading_workers_allow_the_bubblewrap_sandbox(services: dict, name: str):
    options = {opt.replace(":", "=") for opt in services[name]["security_opt"]}
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= options
    assert not services[name].get("privileged", False), "the sandbox must not need a privileged container"


def test_gpu_worker_reserves_one_nvidia_gpu(services: dict):
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert int(device["count"]) == 1
    assert "gpu" in device["capabilities"]
    assert environment(services["worker-gpu"])["CUDA_VISIBLE_DEVICES"] == "0"


def test_only_the_gpu_worker_needs_a_profile(services: dict):
    """Plain ``docker compose up`` must work on a machine without a GPU."""
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert [name for name, s in services.items() if s.get("profiles")] == ["worker-gpu"]


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_builds_the_sandbox_capable_non_root_image():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim-bookworm"
    text = "\n".join(instructions)
    assert re.search(r"apt-get install[^\n]*\bbubblewrap\b", text)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    cmd = next(line for line in reversed(instructions) if line.startswith("CMD "))
    assert "daphne -b 0.0.0.0 -p 8000 portal.asgi:application" in cmd
    assert cmd.index("migrate") < cmd.index("collectstatic") < cmd.index("sync_labs") < cmd.index("daphne")
