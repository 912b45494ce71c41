"""A request's log line, its trace and the metrics agree on its backend, status and cost; content stays out
of the log unless asked; the decision ring keeps sampled decisions without content; [logging] formats."""

from __future__ import annotations

import io
import logging

import openai
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from nexus.core import keys
from nexus.core.config import LoggingConfig
from nexus.core.logs import configure_logging
from tests.harness import eventually
from tests.router_node.conftest import backend_for

PRICED = [{"name": "m", "input_usd_per_1m": 3000.0, "output_usd_per_1m": 7000.0}]
SECRET_PROMPT = "my secret prompt 1234"


def _traced(gw) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw.node.observability.use_tracer_provider(provider)
    return exporter


def _lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "nexus.request"]


async def _samples(http, url) -> dict:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    return {(m.name, tuple(sorted(m.labels.items()))): m.value
            for fam in text_string_to_metric_families(text) for m in fam.samples}


async def test_log_line_span_and_metrics_agree(fakes, gateways, http, caplog):
    broken = await fakes("broken", ("m",), fail_mode="500")
    good = await fakes("good", ("m",))
    gw = await gateways([backend_for(broken, type="generic", priority=0, models=PRICED),
                         backend_for(good, type="generic", priority=9, models=PRICED)])
    spans = _traced(gw)
    caplog.set_level(logging.INFO, logger="nexus.request")
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": SECRET_PROMPT}])
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    request_id = reply.headers["x-nexus-request-id"]
    await eventually(lambda: len(_lines(caplog)) == 2)
    ok, missing = _lines(caplog)
    # the log line
    assert ok["request_id"] == request_id and ok["backend"] == "good" and ok["status"] == 200
    assert ok["retries"] == 1 and ok["route_reason"] and ok["resolved_model"] == "m"
    assert ok["cost_usd"] > 0 and ok["prompt_tokens"] > 0 and ok["ttfb_ms"] is not None
    assert missing["status"] == 404 and missing["backend"] is None and missing["error"] == "ModelNotFound"
    assert SECRET_PROMPT not in caplog.text and "messages" not in ok
    # the trace: a request span with the pipeline and both upstream attempts as children
    finished = {s.name: [] for s in spans.get_finished_spans()}
    for s in spans.get_finished_spans():
        finished[s.name].append(s)
    root = next(s for s in finished["nexus.request"] if s.attributes["nexus.request_id"] == request_id)
    attrs = root.attributes
    assert (attrs["nexus.backend"], attrs["http.response.status_code"]) == ("good", 200)
    assert attrs["nexus.cost_usd"] == pytest.approx(ok["cost_usd"])
    assert attrs["gen_ai.request.model"] == "m" and attrs["gen_ai.usage.input_tokens"] == ok["prompt_tokens"]
    children = [s for name in ("nexus.pipeline", "nexus.upstream") for s in finished[name]
                if s.parent is not None and s.parent.span_id == root.context.span_id]
    upstream = [s for s in children if s.name == "nexus.upstream"]
    assert [s.attributes["nexus.backend"] for s in upstream] == ["broken", "good"]
    assert [s.attributes["http.response.status_code"] for s in upstream] == [502, 200]
    pipeline = [s for s in children if s.name == "nexus.pipeline"]
    assert pipeline and pipeline[0].attributes["nexus.backend"] == "broken"  # the decision's first choice
    assert all(root.start_time <= s.start_time and s.end_time <= root.end_time for s in children)
    # the metrics
    samples = await _samples(http, gw.url)
    labels = (("backend", "good"), ("model", "m"))
    assert samples[("nexus_cost_per_request_usd_sum", labels)] == pytest.approx(ok["cost_usd"])
    assert samples[("nexus_request_duration_seconds_count", labels)] == 1
    assert samples[("nexus_requests_total", (("backend", "good"), ("endpoint", "/v1/chat/completions"),
                                             ("status", "200")))] == 1
    assert samples[("nexus_tokens_total", (*labels, ("type", "prompt")))] == ok["prompt_tokens"]


async def test_content_logging_is_opt_in(fakes, gateways, caplog):
    good = await fakes("good", ("m",))
    gw = await gateways([backend_for(good)], logging={"enable_content_logging": True})
    caplog.set_level(logging.INFO, logger="nexus.request")
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": SECRET_PROMPT}])
    await eventually(lambda: _lines(caplog))
    assert _lines(caplog)[0]["messages"] == [{"role": "user", "content": SECRET_PROMPT}]


async def test_sampled_decisions_reach_the_ring_without_content(fakes, gateways, redis):
    good = await fakes("good", ("m",))
    gw = await gateways([backend_for(good)], telemetry={"decisions_sample_ratio": 1.0, "decisions_kept": 3},
                        node_id="ring-node")
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        for _ in range(5):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": SECRET_PROMPT}])

    async def ring() -> list:
        return await redis.lrange(keys.decisions("ring-node"), 0, -1)

    items = await eventually(lambda: _full(ring, 3))
    docs = [orjson.loads(i) for i in items]
    assert all(d["backend"] == "good" and d["decision"] == "route" for d in docs)
    assert docs[0]["steps"][0]["reconciler"] == "RequestAnalyzer"
    assert docs[0]["at"] >= docs[-1]["at"]  # newest first
    assert all(SECRET_PROMPT.encode() not in i for i in items)


async def _full(ring, n):
    items = await ring()
    return items if len(items) == n else None


def test_json_and_pretty_log_lines():
    stream = io.StringIO()
    handler = configure_logging(LoggingConfig(format="json", level="warn", component_levels={"api": "info"}),
                                stream)
    root = logging.getLogger("nexus")
    try:
        logging.getLogger("nexus.request").info("request r1", extra={"fields": {"backend": "b", "status": 200}})
        logging.getLogger("nexus.router").info("hidden at warn")
        line = orjson.loads(stream.getvalue().splitlines()[0])
        assert (line["logger"], line["level"], line["backend"], line["status"]) == ("nexus.request", "info", "b", 200)
        assert "hidden" not in stream.getvalue()
        stream.truncate(0)
        configure_logging(LoggingConfig(format="pretty"), stream)
        logging.getLogger("nexus.request").warning("request r2", extra={"fields": {"backend": "b"}})
        assert "request r2 backend=b" in stream.getvalue()
    finally:
        for h in [h for h in root.handlers if getattr(h, "_nexus", False)]:
            root.removeHandler(h)
        root.propagate = True
        root.setLevel(logging.NOTSET)
        logging.getLogger("nexus.request").setLevel(logging.NOTSET)
        assert handler is not None


async def test_otlp_export_configured_in_telemetry(fakes, gateways):
    """[telemetry] otel_enabled: spans go over OTLP/HTTP to otlp_endpoint with otlp_headers (a receiver here)."""
    got: list[tuple[dict, bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        good = await fakes("good", ("m",))
        gw = await gateways([backend_for(good)], telemetry={
            "otel_enabled": True, "otlp_endpoint": f"http://127.0.0.1:{port}/v1/traces",
            "service_name": "nexus-test", "otlp_headers": {"x-tenant": "t1"}})
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        await gw.node.observability.close()  # shuts the provider down: the batch is flushed now
        assert got, "no OTLP export arrived"
        headers, body = got[0]
        assert headers["x-tenant"] == "t1" and headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        resource = export.resource_spans[0]
        service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
        names = sorted(span.name for scope in resource.scope_spans for span in scope.spans)
        assert service == "nexus-test" and names == ["nexus.pipeline", "nexus.request", "nexus.upstream"]
    finally:
        await runner.cleanup()
