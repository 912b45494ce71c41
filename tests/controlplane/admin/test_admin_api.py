import time
from datetime import UTC, datetime

import pytest

from nexus.controlplane.admin import AdminAuthError, check_admin_token
from nexus.core.periods import PeriodRule, period_of
from nexus.core.state import read_desired
from tests.controlplane.admin.conftest import TOKEN


@pytest.mark.parametrize("token", ["", "changeme", "admin", "short-token"], ids=["empty", "changeme", "admin", "short"])
def test_weak_tokens_refused_unless_local_demo(token):
    with pytest.raises(AdminAuthError, match="NEXUS_ADMIN_TOKEN"):
        check_admin_token(token)
    assert check_admin_token(token, local_demo=True) == token


@pytest.mark.parametrize(
    "token", [None, "wrong-token-0123456789", TOKEN + "x", TOKEN[:-1]], ids=["missing", "wrong", "longer", "prefix"]
)
async def test_requests_without_the_right_token_are_401(admin, token):
    status, body = await admin.call("GET", "/backends", token=token)
    assert status == 401
    assert "admin token" in body["detail"]


async def test_backend_crud_bumps_version_and_never_returns_secrets(admin):
    status, backends = await admin.call("GET", "/backends")
    assert status == 200
    assert [b["name"] for b in backends] == ["cloud", "local"]
    cloud = backends[0]
    assert cloud["secret"] == "TEST_KEY" and cloud["zone_effective"] == "open"
    assert "sk-test-secret" not in str(backends)
    v0, _ = await read_desired(admin.redis)
    status, body = await admin.call(
        "PUT", "/backends/new-box", json={"url": "http://127.0.0.1:9/n", "type": "ollama", "tier": 3, "models": ["m"]}
    )
    assert (status, body) == (200, {"version": v0 + 1})
    status, one = await admin.call("GET", "/backends/new-box")
    assert one["tier"] == 3 and one["zone_effective"] == "restricted"
    status, body = await admin.call("DELETE", "/backends/new-box")
    assert (status, body) == (200, {"version": v0 + 2})
    assert (await admin.call("GET", "/backends/new-box"))[0] == 404
    assert (await admin.call("DELETE", "/backends/new-box"))[0] == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        pytest.param("PUT", "/backends/x", {"url": "http://h:1", "tier": 9}, "tier", id="tier-9"),
        pytest.param("PUT", "/backends/x", {"url": "http://h:1", "zone": "dmz"}, "zone", id="unknown-zone"),
        pytest.param("PUT", "/backends/x", {"url": "http://h:1", "type": "openai"}, "secret", id="cloud-no-key"),
        pytest.param("PUT", "/backends/x", {"url": "ftp://h"}, "url", id="bad-url"),
        pytest.param("PUT", "/backends/x", {"url": "http://h:1", "name": "y"}, "does not match", id="name-mismatch"),
        pytest.param("PUT", "/policies", [{"model_pattern": "gpt-[4"}], "model_pattern", id="bad-glob"),
        pytest.param("PUT", "/policies", [{"model_pattern": "m", "min_tier": 9}], "min_tier", id="policy-tier-9"),
        pytest.param("PUT", "/routing", {"aliases": {"a": "b", "b": "a"}}, "alias cycle", id="alias-cycle"),
        pytest.param("PUT", "/routing", {"strategy": "fastest"}, "strategy", id="bad-strategy"),
        pytest.param("PUT", "/budgets/global", {"monthly_limit_usd": -1}, "monthly_limit_usd", id="negative-limit"),
        pytest.param("PUT", "/budgets/global", {"soft_limit_percent": 250}, "soft_limit_percent", id="soft-250"),
        pytest.param("PUT", "/budgets/global", {"hard_limit_action": "explode"}, "hard_limit_action", id="bad-action"),
        pytest.param("PUT", "/budgets/global", {"reset_day": 29}, "reset_day", id="global-reset-29"),
        pytest.param("PUT", "/budgets/team-a", {"reset_day": 0}, "reset_day", id="key-reset-0"),
        pytest.param("PUT", "/budgets/team-a", {"reset_day": 31}, "reset_day", id="key-reset-31"),
    ],
)
async def test_invalid_writes_are_422_naming_the_field_and_change_nothing(admin, method, path, body, field):
    before = await read_desired(admin.redis)
    status, answer = await admin.call(method, path, json=body)
    assert status == 422, answer
    assert field in str(answer)
    assert await read_desired(admin.redis) == before


async def test_policies_and_routing_round_trip(admin):
    status, _ = await admin.call(
        "PUT", "/policies", json=[{"model_pattern": "m*", "privacy": "restricted", "min_tier": 2}]
    )
    assert status == 200
    assert (await admin.call("GET", "/policies"))[1][0]["privacy"] == "restricted"
    status, _ = await admin.call(
        "PUT",
        "/routing",
        json={"aliases": {"big": "m"}, "strategy": "round_robin", "weights": {"priority": 1, "load": 2, "latency": 3}},
    )
    assert status == 200
    routing = (await admin.call("GET", "/routing"))[1]
    assert routing["aliases"] == {"big": "m"} and routing["strategy"] == "round_robin"
    assert routing["weights"] == {"priority": 1.0, "load": 2.0, "latency": 3.0}
    assert routing["policies"][0]["model_pattern"] == "m*"  # a routing PUT leaves policies alone


async def test_budget_put_merges_and_reports_status(admin):
    status, _ = await admin.call(
        "PUT",
        "/budgets/global",
        json={"monthly_limit_usd": 50, "soft_limit_percent": 75, "hard_limit_action": "block_cloud"},
    )
    assert status == 200
    status, _ = await admin.call("PUT", "/budgets/team-a", json={"monthly_limit_usd": 5})
    assert status == 200
    budgets = {b["scope"]: b for b in (await admin.call("GET", "/budgets"))[1]}
    assert budgets["global"]["soft_limit_percent"] == 0.75
    assert budgets["global"]["hard_limit_action"] == "block_cloud"
    assert budgets["global"]["status"] == "normal" and budgets["global"]["remaining_usd"] == 50
    assert budgets["team-a"]["monthly_limit_usd"] == 5
    status, _ = await admin.call("PUT", "/budgets/global", json={"monthly_limit_usd": 80})
    budgets = {b["scope"]: b for b in (await admin.call("GET", "/budgets"))[1]}
    assert budgets["global"]["monthly_limit_usd"] == 80
    assert budgets["global"]["hard_limit_action"] == "block_cloud"  # untouched fields stay
    assert (await admin.call("DELETE", "/budgets/team-a"))[0] == 200
    assert (await admin.call("DELETE", "/budgets/global"))[0] == 422


async def test_a_key_budget_has_its_own_reset_day_or_follows_the_global_one(admin):
    now = time.time()
    today = datetime.fromtimestamp(now, UTC).day
    own = 28 if today != 28 else 27  # a reset day other than today's and the global one
    assert (await admin.call("PUT", "/budgets/global", json={"monthly_limit_usd": 50, "reset_day": 1}))[0] == 200
    assert (await admin.call("PUT", "/budgets/team-a", json={"monthly_limit_usd": 5, "reset_day": own}))[0] == 200
    assert (await admin.call("PUT", "/budgets/team-b", json={"monthly_limit_usd": 5}))[0] == 200
    budgets = {b["scope"]: b for b in (await admin.call("GET", "/budgets"))[1]}
    assert (budgets["global"]["reset_day"], budgets["global"]["period"]) == (1, period_of(now, 1))
    assert (budgets["team-a"]["reset_day"], budgets["team-a"]["reset_day_inherited"]) == (own, False)
    assert budgets["team-a"]["period"] == period_of(now, own)
    assert budgets["team-a"]["period_ends_at"] == PeriodRule(own).end(now)
    assert (budgets["team-b"]["reset_day"], budgets["team-b"]["reset_day_inherited"]) == (1, True)
    # moving the global reset day moves the inheriting key budget with it, not the one with its own
    assert (await admin.call("PUT", "/budgets/global", json={"reset_day": own}))[0] == 200
    budgets = {b["scope"]: b for b in (await admin.call("GET", "/budgets"))[1]}
    assert (budgets["team-b"]["reset_day"], budgets["team-b"]["period"]) == (own, period_of(now, own))
    assert budgets["team-a"]["reset_day"] == own
    _, desired = await read_desired(admin.redis)
    assert desired.routing.key_budgets["team-b"].reset_day is None  # stored as "inherit", not as a copy


async def test_config_export_import_round_trip(admin):
    status, text = await admin.call("GET", "/config/export")
    assert status == 200
    assert 'secret = "TEST_KEY"' in text and "sk-test-secret" not in text
    _, before = await read_desired(admin.redis)
    await admin.call("DELETE", "/backends/local")
    status, body = await admin.call("POST", "/config/import", data=text, headers={"Content-Type": "application/toml"})
    assert status == 200, body
    _, after = await read_desired(admin.redis)
    assert after == before
    bad = text.replace("tier = 1", "tier = 9", 1)
    v_before = await read_desired(admin.redis)
    status, body = await admin.call("POST", "/config/import", data=bad, headers={"Content-Type": "application/toml"})
    assert status == 422 and "tier" in body["detail"]
    assert await read_desired(admin.redis) == v_before


async def test_explain_dry_run_traces_every_reconciler(admin):
    await admin.call("PUT", "/policies", json=[{"model_pattern": "m", "privacy": "restricted"}])
    status, out = await admin.call(
        "POST", "/route/explain", json={"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
    )
    assert status == 200
    assert out["decision"] == "route" and out["backend"] == "local"
    assert out["steps"][0]["reconciler"] == "RequestAnalyzer"
    assert out["steps"][2]["reconciler"] == "PrivacyReconciler"
    assert out["steps"][2]["excluded"][0]["agent_id"] == "cloud"
    assert out["matched_policy"]["privacy"] == "restricted"
    status, out = await admin.call("POST", "/route/explain", json={"request": {"model": "m"}})
    assert status == 422 and "messages" in out["detail"]
