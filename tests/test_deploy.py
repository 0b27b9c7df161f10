"""deploy/ and the Dockerfile, checked without Docker or Kubernetes (neither runs here):
the files parse, the probes and health checks hit endpoints the app really has, ports
line up, every environment variable is a real setting, and shutdown gets enough time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer
from callpipe.server.settings import ServerSettings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
SETTINGS = {name.upper() for name in ServerSettings.model_fields}
# Variables that are not ServerSettings but are read by something real.
OTHER_ENV = {"POD_IP"}  # the Kubernetes downward API, used to build INTERNAL_URL


class Endpoints:
    """Health endpoints of a real running app: ``path in endpoints`` means it answers
    as a health check does (200, or 503 when not ready), not 404."""

    def __init__(self, base: str) -> None:
        self.base = base

    def __contains__(self, path: object) -> bool:
        return httpx.get(f"{self.base}{path}", timeout=5).status_code in (200, 503)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    settings = ServerSettings(  # type: ignore[call-arg]
        _env_file=None,
        public_url="https://x.example",
        callpipe_secret="s",
        data_dir=str(tmp_path_factory.mktemp("data")),
    )
    with BackgroundServer(create_app(_bot, settings)) as server:
        endpoints = Endpoints(server.base_url)
        assert "/no-such-endpoint" not in endpoints
        yield endpoints


async def _bot(runner_args: Any) -> None:
    return None


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def _grace_default() -> float:
    return float(ServerSettings.model_fields["shutdown_grace_secs"].default)


def test_compose_runs_two_instances_on_postgres_behind_a_proxy(routes: Endpoints) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    instances = {name: s for name, s in services.items() if s.get("image") == "callpipe"}
    assert len(instances) == 2
    assert services["postgres"]["image"].startswith("postgres")
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    for name, service in instances.items():
        env = service["environment"]
        assert set(env) <= SETTINGS, set(env) - SETTINGS
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        assert env["INTERNAL_URL"] == f"http://{service['hostname']}:{{port}}"
        assert env["INTERNAL_HOST"] == "0.0.0.0"  # reachable by the other instance
        grace = float(env["SHUTDOWN_GRACE_SECS"])
        assert float(service["stop_grace_period"].rstrip("s")) > grace
        command = service["command"]
        port = command[command.index("--port") + 1]
        assert port in service["expose"] and env["INTERNAL_PORT"] in service["expose"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert f"{name}:{port}" in caddyfile  # the proxy sends traffic to it
        assert "9000" not in caddyfile.split("reverse_proxy", 1)[1].split("{", 1)[0]
    [health] = re.findall(r"health_uri\s+(\S+)", caddyfile)
    assert health == "/readyz" and health in routes
    caddy = services["caddy"]
    assert "443:443" in caddy["ports"] and "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]


def test_kubernetes_probes_ports_env_and_shutdown(routes: Endpoints) -> None:
    docs = _k8s()
    deployment = docs["Deployment/callpipe"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert args[:2] == ["callpipe", "serve"] and int(args[args.index("--port") + 1]) == ports["http"]

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, get
        assert get["port"] in ports

    config = docs["ConfigMap/callpipe-config"]["data"]
    secret = docs["Secret/callpipe-secrets"]["stringData"]
    env = {e["name"] for e in container["env"]}
    for names in (set(config), set(secret), env):
        assert names <= SETTINGS | OTHER_ENV, names - SETTINGS - OTHER_ENV
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {
        "callpipe-config",
        "callpipe-secrets",
    }
    assert int(config["INTERNAL_PORT"]) == ports["internal"]
    assert int(config["METRICS_PORT"]) == ports["metrics"]
    assert config["INTERNAL_HOST"] == "0.0.0.0"
    [url] = [e["value"] for e in container["env"] if e["name"] == "INTERNAL_URL"]
    assert url == "http://$(POD_IP):{port}"
    assert secret["DATABASE_URL"].startswith("postgresql://")

    # Shutdown: preStop, then the whole drain, must fit in the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = float(config.get("SHUTDOWN_GRACE_SECS", _grace_default()))
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace

    service = docs["Service/callpipe"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    policy = docs["NetworkPolicy/callpipe-internal"]
    internal_rules = [
        r for r in policy["spec"]["ingress"] if {"port": ports["internal"]} in r.get("ports", [])
    ]
    assert internal_rules and all("from" in r for r in internal_rules)  # pods only


def test_dockerfile_installs_the_assistants_providers_and_checks_liveness(routes: Endpoints) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRAS=.*openai", text, re.M)
    assert 'pip install ".[${EXTRAS}]"' in text
    assert "DATA_DIR=/data" in text and "chown callpipe:callpipe /data" in text
    [path] = re.findall(r"http://127\.0\.0\.1:8000(/\w+)", text)
    assert path == "/livez" and path in routes
    assert re.search(r'^CMD \["callpipe", "serve"', text, re.M)
