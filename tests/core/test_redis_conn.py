"""Where Redis is: standalone URLs and Redis Sentinel, by URL or by `[redis] sentinels` (issue 12, finding 7)."""

from __future__ import annotations

import pytest

from nexus.core.config import load_settings
from nexus.core.errors import ConfigError
from nexus.core.redis_conn import RedisTarget, parse_target


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://h:6379/2", RedisTarget(url="redis://h:6379/2")),
        ("unix:///run/redis.sock", RedisTarget(url="unix:///run/redis.sock")),
        ("redis+sentinel://s1:26380,s2,[::1]:26381/nexus/3",
         RedisTarget(sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)), master="nexus", db=3)),
        ("rediss+sentinel://u:p%40ss@s1/m",
         RedisTarget(sentinels=(("s1", 26379),), master="m", username="u", password="p@ss", ssl=True)),
    ],
    ids=["standalone", "unix", "sentinel", "sentinel-auth-tls"],
)
def test_targets(url, target):
    assert parse_target(url) == target


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h", "must start with"),
        ("redis+sentinel:///m", "lists the sentinels"),
        ("redis+sentinel://s1", "ends in /<master name>"),
        ("redis+sentinel://s1:x/m", "not a number"),
        ("redis+sentinel://s1:70000/m", "outside 1-65535"),
        ("redis+sentinel://s1/m/zero", "db after the master name"),
    ],
)
def test_bad_targets_name_the_key(url, says):
    with pytest.raises(ConfigError, match=says):
        parse_target(url)


def test_sentinels_by_list_and_by_environment():
    settings = load_settings(environ={"NEXUS_REDIS_SENTINELS": "a:1, b:2", "NEXUS_REDIS_MASTER_NAME": "nx"})
    assert settings.redis.configured
    assert settings.redis.target() == RedisTarget(sentinels=(("a", 1), ("b", 2)), master="nx")
    with pytest.raises(ConfigError, match="either url or sentinels"):
        load_settings(overrides={"redis": {"url": "redis://h", "sentinels": ["a:1"]}})


def test_describe_never_shows_a_password():
    assert "secret" not in parse_target("redis+sentinel://:secret@s1/m").describe()
    assert "secret" not in parse_target("redis://:secret@h:6379/0").describe()
