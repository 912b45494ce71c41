"""deploy/prometheus/alerts.yml and deploy/grafana/nexus.json, checked by the tools that will run them and
against the metric names a live Nexus serves.

- `promtool check rules` loads the alerts; `promtool test rules tests/deploy/alerts_test.yml` shows they fire
  on the series that mean trouble (Debian's `prometheus` package has promtool; .ci/run installs it).
- The Grafana dashboard validates against the schema of its JSON model (tests/deploy/grafana_dashboard.schema.json),
  panel ids are unique and panels do not overlap.
- Every metric either file names is served on a live /metrics: a gateway with the worker loops' and the admin
  API's registries included, as `nexus serve` composes them, after one request.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from nexus.controlplane.admin import create_admin_app
from nexus.worker.metrics import REGISTRY as WORKER_REGISTRY
from tests.harness import GatewayHarness, settings_for

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA = ROOT / "deploy" / "grafana" / "nexus.json"
HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"\b(nexus_[a-z0-9_]+)\b")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install -y prometheus (Debian's package ships promtool)"
    return found


def test_promtool_checks_the_alert_rules():
    out = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_alerts_fire_on_trouble():
    out = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=HERE, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_is_valid():
    dashboard = json.loads(GRAFANA.read_text())
    schema = json.loads((HERE / "grafana_dashboard.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(dashboard, schema, cls=jsonschema.Draft202012Validator)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_schema_refuses_a_broken_dashboard():
    schema = json.loads((HERE / "grafana_dashboard.schema.json").read_text())
    broken = json.loads(GRAFANA.read_text())
    broken["panels"][1].pop("targets")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def _referenced() -> dict[str, set[str]]:
    exprs = {"alerts.yml": [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]],
             "nexus.json": [t["expr"] for p in json.loads(GRAFANA.read_text())["panels"] for t in p.get("targets", [])]}
    return {name: {m for e in es for m in _NAME.findall(e)} for name, es in exprs.items()}


async def test_every_referenced_metric_is_served(redis_server, redis, fakes):
    fake = await fakes("a", ("m",))
    settings = settings_for([{"name": "a", "url": fake.url, "type": "generic", "models": ["m"]}],
                            routing={"budget": {"monthly_limit_usd": 10.0}})
    gw = await GatewayHarness(settings, redis_server.url).start()
    admin_redis = Redis.from_url(redis_server.url)
    try:
        admin = create_admin_app(settings, admin_redis, token="observability-files-token-0123")
        gw.node.metrics.include(WORKER_REGISTRY)  # as nexus serve composes them
        gw.node.metrics.include(admin.state.metrics.registry)
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        text = gw.node.metrics.render().decode()
    finally:
        await gw.stop()
        await admin_redis.aclose()
    served: set[str] = set()
    for fam in text_string_to_metric_families(text):
        served.add(fam.name)
        served.update(fam.name + s for s in _SUFFIXES)
        served.update(s.name for s in fam.samples)
    for source, names in _referenced().items():
        assert names, source
        assert names <= served, f"{source} names metrics no /metrics serves: {sorted(names - served)}"
    # the Rust Nexus names its users alert on are among them
    rust = {"nexus_request_duration_seconds", "nexus_backend_latency_seconds", "nexus_tokens_total",
            "nexus_backends_total", "nexus_backends_healthy", "nexus_models_available", "nexus_pending_requests",
            "nexus_reconciler_duration_seconds", "nexus_budget_limit_usd", "nexus_budget_events_total",
            "nexus_cost_per_request_usd", "nexus_requests_total", "nexus_errors_total", "nexus_fallbacks_total"}
    assert rust <= served, sorted(rust - served)
