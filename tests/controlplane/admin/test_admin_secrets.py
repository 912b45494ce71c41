"""Admin writes may only reference secrets the operator declared, for hosts those secrets list, and never
name an environment variable; backend URLs are validated strictly and never echoed with credentials
(issue 12, findings 2 and 3)."""

from __future__ import annotations

import io

import pytest

from nexus.core.config import LIMITS
from nexus.core.state import read_desired

OK_URL = "http://127.0.0.1:9/new"
TOML = {"Content-Type": "application/toml"}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param({"url": OK_URL, "type": "openai", "api_key_env": "OPENAI_API_KEY"}, "api_key_env names an "
                     "environment variable", id="names-a-variable"),
        pytest.param({"url": OK_URL, "api_key_env": "PATH"}, "api_key_env", id="names-PATH"),
        pytest.param({"url": OK_URL, "type": "openai", "secret": "PATH"}, "secret 'PATH' is not declared",
                     id="undeclared-secret"),
        pytest.param({"url": "http://localhost:9/x", "type": "openai", "secret": "TEST_KEY"},
                     "may only be sent to 127.0.0.1, not to localhost", id="host-outside-the-list"),
    ],
)
async def test_backend_writes_cannot_send_a_secret_anywhere(admin, body, says):
    before = await read_desired(admin.redis)
    status, answer = await admin.call("PUT", "/backends/x", json=body)
    assert status == 422, answer
    assert says in str(answer)
    assert await read_desired(admin.redis) == before


async def test_a_declared_secret_for_its_own_host_is_accepted(admin):
    body = {"url": OK_URL, "type": "openai", "secret": "TEST_KEY"}
    status, answer = await admin.call("PUT", "/backends/x", json=body)
    assert status == 200, answer
    status, one = await admin.call("GET", "/backends/x")
    assert one["secret"] == "TEST_KEY" and "api_key_env" not in one


async def test_import_is_held_to_the_same_secret_rules(admin):
    toml = '[[backends]]\nname = "x"\nurl = "http://localhost:9"\ntype = "openai"\nsecret = "TEST_KEY"\n'
    before = await read_desired(admin.redis)
    status, answer = await admin.call("POST", "/config/import", data=toml, headers=TOML)
    assert status == 422 and "not to localhost" in str(answer), answer
    legacy = '[[backends]]\nname = "x"\nurl = "http://127.0.0.1:9"\napi_key_env = "PATH"\n'
    status, answer = await admin.call("POST", "/config/import", data=legacy, headers=TOML)
    assert status == 422 and "api_key_env" in str(answer), answer
    assert await read_desired(admin.redis) == before


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:hunter2@127.0.0.1:9",
        "http://127.0.0.1:0",
        "http://127.0.0.1:99999",
        "http://[::1:9",
        "http://127.0.0.1:9/%zz",
        "http://127.0.0.1:9/x?token=hunter2",
    ],
    ids=["userinfo", "port-0", "port-99999", "unbalanced-bracket", "bad-escape", "query"],
)
async def test_bad_urls_are_422_and_never_echoed(admin, url):
    status, answer = await admin.call("PUT", "/backends/x", json={"url": url})
    assert status == 422, answer
    assert "url" in str(answer)
    assert "hunter2" not in str(answer)  # FastAPI's own 422 would repeat the input


async def test_oversized_admin_bodies_are_413(admin):
    size = LIMITS.admin_body_bytes + 1
    declared = io.BytesIO(b"#" * size)  # Content-Length says it: refused before reading
    status, answer = await admin.call("POST", "/config/import", data=declared, headers=TOML)
    assert status == 413, answer

    async def chunks():  # chunked, no Content-Length: cut off once past the limit
        for _ in range(size // 65536 + 1):
            yield b"#" * 65536

    status, answer = await admin.call("POST", "/config/import", data=chunks(), headers=TOML)
    assert status == 413, answer
