"""Every admin route and method refuses a request without the admin token, or with a wrong one: 401, and
nothing changes. The routes come from the served OpenAPI schema, so a route added later is covered without
a new test (and a router mounted without the `Authorized` dependency fails here)."""

from __future__ import annotations

import re

import pytest

from nexus.controlplane.admin import create_admin_app
from nexus.core.fleet.lifecycle import Operation
from nexus.core.fleet.store import write_op
from nexus.core.state import read_desired
from tests.controlplane.admin.conftest import SECRETS, SEED, SEED_KEY, SEED_TEAM, TOKEN
from tests.harness import settings_for

SCHEMA = create_admin_app(settings_for(SEED, secrets=SECRETS), token=TOKEN).openapi()
ROUTES = sorted(
    (method.upper(), path)
    for path, operations in SCHEMA["paths"].items()
    for method in operations
    if method in {"get", "put", "post", "patch", "delete"}
)
# Path parameters get values that exist, so a route answering without auth would really act on something.
VALUES = {"name": "local", "scope": "global", "team": SEED_TEAM, "key_id": SEED_KEY}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: VALUES.get(m.group(1), "x"), path).removeprefix("/admin/v1")


def test_the_schema_lists_every_router() -> None:
    methods = {f"{m} {p}" for m, p in ROUTES}
    assert {"PUT /admin/v1/budgets/{scope}", "DELETE /admin/v1/backends/{name}", "POST /admin/v1/config/import",
            "GET /admin/v1/spend", "POST /admin/v1/route/explain"} <= methods
    assert len(ROUTES) >= 17


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"], ids=["no-token", "wrong-token"])
async def test_every_route_and_method_needs_the_admin_token(admin, method: str, path: str, token: str | None):
    await write_op(admin.redis, Operation(id="x", kind="load", model="m", backend="local", created_at=1, updated_at=1))
    before = await read_desired(admin.redis)
    # a well-formed body where one is taken: the refusal must come from auth, not from validation
    body = {"monthly_limit_usd": 1.0} if "budgets" in path else {}
    status, answer = await admin.call(method, concrete(path), json=body if method in ("PUT", "POST") else None,
                                      token=token)
    assert status == 401, (method, path, status, answer)
    assert await read_desired(admin.redis) == before
    if method == "GET":  # with the token the same request is answered: the 401 was the token's doing
        assert (await admin.call(method, concrete(path)))[0] == 200, path
