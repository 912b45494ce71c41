"""Quarantined telemetry is visible in the admin API (issue 12, finding 5)."""

from __future__ import annotations

import time

from nexus.core.telemetry_store import TelemetryRecord
from tests.stored import put_records


async def test_quarantined_records_are_listed_with_their_reason(admin):
    now = time.time()
    bad = TelemetryRecord(id="huge", ts=now, node="n", backend="b", model="m", prompt_tokens=2**63)
    good = TelemetryRecord(id="fine", ts=now, node="n", backend="b", model="m")
    written = await put_records(admin.redis, [bad, good])
    assert [rid for rid, _ in written.quarantined] == ["huge"]
    status, body = await admin.call("GET", "/telemetry/quarantine")
    assert status == 200
    assert body["count"] == 1 and [r["id"] for r in body["records"]] == ["huge"]
    assert "prompt_tokens" in body["records"][0]["reason"]
