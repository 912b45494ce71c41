"""Keys and teams: validation, digests (never secrets) in Redis, the lookup table, revocation, expiry, rotation."""

from __future__ import annotations

import orjson
import pytest

from nexus.core import keys
from nexus.core.config import DesiredConfig, validate_desired
from nexus.core.errors import ConfigError
from nexus.core.recovery import restore_desired
from nexus.core.state import read_desired, seed_desired, update_desired
from nexus.core.tenancy import (
    KeyConfig,
    TeamConfig,
    build_tenants,
    hash_key,
    new_key_id,
    new_key_secret,
    sha256_digest,
)

SECRET = b"s" * 32


def key(kid: str = "key_00000000000a", secret: str = "nx-one", **kw) -> KeyConfig:
    return KeyConfig(id=kid, name="app", digest=hash_key(SECRET, secret), **kw)


def test_new_keys_are_prefixed_random_and_hashed_under_the_server_secret():
    a, b = new_key_secret(), new_key_secret()
    assert a.startswith("nx-") and len(a) >= 40 and a != b
    assert new_key_id() != new_key_id()
    assert hash_key(SECRET, a) != hash_key(b"t" * 32, a)  # keyed: the digest alone verifies nothing
    assert a not in hash_key(SECRET, a)


def test_the_table_finds_managed_and_static_keys_and_says_why_one_cannot_be_used():
    rotated = key("key_00000000000b", "nx-new", previous_digest=hash_key(SECRET, "nx-old"), previous_until=50.0)
    table = build_tenants(
        [key(), rotated, key("key_00000000000c", "nx-gone", revoked_at=5.0), key("key_00000000000d", "nx-exp",
                                                                                  expires_at=10.0)],
        [],
        [sha256_digest("static")[7:]],
    )
    find = lambda k: table.find(hash_key(SECRET, k), sha256_digest(k))  # noqa: E731
    assert table.required and find("nx-one").key_id == "key_00000000000a"
    assert find("nx-unknown") is None
    assert find("static").key_id == sha256_digest("static")[7:19] and not find("static").limited
    assert find("nx-old").key_id == find("nx-new").key_id == "key_00000000000b"
    assert find("nx-old").usable(49.0) is None and "grace period" in find("nx-old").usable(50.0)
    assert find("nx-new").usable(1e9) is None
    assert "revoked" in find("nx-gone").usable(0.0)
    assert find("nx-exp").usable(9.9) is None and "expired" in find("nx-exp").usable(10.0)
    assert not build_tenants([], []).required


def test_keys_must_name_an_existing_team_and_have_their_own_secret():
    with pytest.raises(ConfigError, match="team 'nope' does not exist"):
        validate_desired({"keys": [key(team="nope").model_dump()]}, "test")
    with pytest.raises(ConfigError, match="another key's"):
        validate_desired({"keys": [key().model_dump(), key("key_00000000000b").model_dump()]}, "test")
    with pytest.raises(ConfigError, match="id"):
        validate_desired({"keys": [{**key().model_dump(), "id": "bad|id"}]}, "test")
    with pytest.raises(ConfigError, match="rpm"):
        validate_desired({"keys": [{**key().model_dump(), "rpm": 0}]}, "test")
    with pytest.raises(ConfigError, match="budget"):
        validate_desired({"keys": [{**key().model_dump(), "budget": {"monthly_limit_usd": -1}}]}, "test")


async def test_keys_and_teams_are_stored_as_digests_and_survive_a_restore(redis):
    await seed_desired(redis, DesiredConfig())
    team = TeamConfig(name="t", rpm=10, budget={"monthly_limit_usd": 5})
    version = await update_desired(
        redis, lambda cur: cur.model_copy(update={"teams": [team], "keys": [key(team="t", tpm=100)]}), "test"
    )
    _, desired = await read_desired(redis)
    assert desired.keys[0].tpm == 100 and desired.teams == [team]
    raw = await redis.hgetall(keys.CONFIG_KEYS)
    assert b"nx-one" not in b"".join(raw.values())
    assert orjson.loads(raw[b"key_00000000000a"])["digest"].startswith("hmac-sha256:")
    await redis.flushall()
    assert await restore_desired(redis, desired, version)
    assert (await read_desired(redis)) == (version, desired)
