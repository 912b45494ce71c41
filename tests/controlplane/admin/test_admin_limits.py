"""An import past the desired-state limits is 422 and changes nothing (issue 12, finding 6)."""

from __future__ import annotations

import tomli_w

from nexus.core.config import LIMITS
from nexus.core.state import read_desired


def backends(n: int) -> list[dict]:
    return [{"name": f"b{i}", "url": "http://127.0.0.1:9", "models": ["m"]} for i in range(n)]


async def test_an_import_over_the_limit_is_422_and_changes_nothing(admin):
    before = await read_desired(admin.redis)
    toml = tomli_w.dumps({"backends": backends(LIMITS.backends + 1)})
    status, answer = await admin.call("POST", "/config/import", data=toml, headers={"Content-Type": "application/toml"})
    assert status == 422, str(answer)[:300]
    assert f"at most {LIMITS.backends}" in str(answer)
    assert await read_desired(admin.redis) == before
