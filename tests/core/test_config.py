import time
from pathlib import Path

import pytest

from nexus.core.config import load_settings
from nexus.core.errors import ConfigError
from nexus.core.model import HardLimitAction, Strategy, Zone

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"OPENAI_API_KEY": "sk-test"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_annotated_example_loads():
    settings = load_settings(ROOT / "examples" / "nexus.toml", environ=KEYS)
    assert [b.name for b in settings.backends] == ["gpu-box", "laptop-ollama", "openai"]
    assert settings.routing.budget.hard_limit_action is HardLimitAction.BLOCK_CLOUD
    assert settings.routing.aliases["gpt-4"] == "llama3:70b"
    assert settings.backends[1].models[1].vision is True


def test_demo_config_loads_without_secrets():
    settings = load_settings(ROOT / "nexus" / "demo" / "nexus.toml", environ={})
    assert {b.name for b in settings.backends} == {"local-gpu", "cloud-api"}


@pytest.mark.parametrize(
    ("value", "fraction"),
    [("0.75", 0.75), ("75", 0.75), ("0.5", 0.5), ("100", 1.0)],
    ids=["fraction", "percent", "half", "hundred-percent"],
)
def test_soft_limit_percent_takes_fraction_or_percent(tmp_path, value, fraction):
    path = write(tmp_path, f"[routing.budget]\nmonthly_limit_usd = 10\nsoft_limit_percent = {value}\n")
    assert load_settings(path, environ={}).routing.budget.soft_limit_percent == pytest.approx(fraction)


def test_environment_overrides_toml(tmp_path):
    path = write(
        tmp_path,
        '[server]\nport = 8000\n[redis]\nurl = "redis://toml:6379"\n'
        "[routing]\nstrategy = 'smart'\n[routing.budget]\nmonthly_limit_usd = 10\n",
    )
    env = {
        "NEXUS_SERVER_PORT": "9000",
        "NEXUS_REDIS_URL": "redis://env:6379",
        "NEXUS_ROUTING_STRATEGY": "random",
        "NEXUS_BUDGET_MONTHLY_LIMIT_USD": "25",
        "NEXUS_BUDGET_SOFT_LIMIT_PERCENT": "80",
        "NEXUS_ADMIN_TOKEN": "t0k",
    }
    s = load_settings(path, environ=env)
    assert (s.server.port, s.redis.url, s.routing.strategy) == (9000, "redis://env:6379", Strategy.RANDOM)
    assert (s.routing.budget.monthly_limit_usd, s.routing.budget.soft_limit_percent) == (25.0, 0.8)
    assert s.admin.token == "t0k"


def test_zone_is_case_insensitive_and_defaults_by_type(tmp_path):
    path = write(
        tmp_path,
        '[[backends]]\nname = "a"\nurl = "http://h:1"\ntype = "vllm"\nzone = "OPEN"\n'
        '[[backends]]\nname = "b"\nurl = "http://h:2"\ntype = "Ollama"\n',
    )
    s = load_settings(path, environ={})
    assert s.backends[0].zone is Zone.OPEN
    assert s.backends[1].zone is None


BAD = [
    pytest.param(
        '[[backends]]\nname = "a"\nurl = "http://h"\nzone = "dmz"\n',
        ["backends[0].zone (backend 'a')", "unknown zone 'dmz'", '"restricted" or "open"'],
        id="unknown-zone",
    ),
    pytest.param(
        '[[backends]]\nname = "a"\nurl = "http://h"\ntier = 9\n',
        ["backends[0].tier (backend 'a')", "less than or equal to 5"],
        id="tier-too-high",
    ),
    pytest.param(
        '[[backends]]\nname = "a"\nurl = "http://h"\ntier = 0\n',
        ["backends[0].tier", "greater than or equal to 1"],
        id="tier-too-low",
    ),
    pytest.param(
        '[routing.aliases]\na = "b"\nb = "c"\nc = "a"\n',
        ["routing.aliases", "alias cycle a -> b -> c -> a"],
        id="alias-cycle",
    ),
    pytest.param(
        '[[routing.policies]]\nmodel_pattern = "gpt-[4"\n',
        ["routing.policies[0].model_pattern", "unclosed '['", "close it with ']'"],
        id="bad-glob",
    ),
    pytest.param(
        '[[routing.policies]]\nmodel_pattern = ""\n', ["routing.policies[0].model_pattern", "empty"], id="empty-glob"
    ),
    pytest.param("[server]\nmax_header_bytes = 100\n", ["server.max_header_bytes", "greater than or equal to 1024"],
                 id="header-limit-too-small"),
    pytest.param("[server]\nheader_timeout_seconds = 0\n", ["server.header_timeout_seconds", "greater than 0"],
                 id="header-timeout-zero"),
    pytest.param("[server]\nmax_connections = 0\n", ["server.max_connections"], id="no-connections"),
    pytest.param("[quality]\nbreaker_retry_seconds = -1\n", ["quality.breaker_retry_seconds"],
                 id="breaker-retry-negative"),
    pytest.param(
        '[[routing.policies]]\nmodel_pattern = "llama[z-a]*"\n',
        ["routing.policies[0].model_pattern", "bad range 'z-a'", "low to high"],
        id="glob-bad-range",
    ),
    pytest.param(
        f'[[routing.policies]]\nmodel_pattern = "{"*" * 1000}"\n',
        ["routing.policies[0].model_pattern", "1000 characters long; the limit is 256"],
        id="glob-1000-stars",
    ),
    pytest.param(
        '[[backends]]\nname = "a"\nurl = "http://h:1"\n[[backends]]\nname = "a"\nurl = "http://h:2"\n',
        ["backend name 'a' is used twice", "unique"],
        id="duplicate-backend",
    ),
    pytest.param(
        "[routing.budget]\nmonthly_limit_usd = -5\n",
        ["routing.budget.monthly_limit_usd", "greater than or equal to 0"],
        id="negative-limit",
    ),
    pytest.param(
        '[[routing.policies]]\nmodel_pattern = "*"\nmax_cost_per_request = -1\n',
        ["routing.policies[0].max_cost_per_request"],
        id="negative-cost",
    ),
    pytest.param(
        '[routing.budget]\nhard_limit_action = "explode"\n',
        ["routing.budget.hard_limit_action", "'warn', 'block_cloud' or 'block_all'"],
        id="bad-action",
    ),
    pytest.param(
        '[[backends]]\nname = "a"\nurl = "http://h"\ntype = "openai"\n',
        ["backends[0] (backend 'a')", "secret is required for type 'openai'"],
        id="cloud-without-key-env",
    ),
    pytest.param("[helth_check]\nenabled = true\n", ["unknown section [helth_check]", "did you mean [health_check]?"],
                 id="section-typo"),
    pytest.param("[logging]\nformat = \"xml\"\n", ["logging.format", "pretty"], id="log-format"),
    pytest.param(
        "[routing.budget]\nreset_day = 29\n", ["routing.budget.reset_day", "less than or equal to 28"], id="reset-29"
    ),
    pytest.param(
        '[routing.key_budgets."team-a"]\nreset_day = 0\n',
        ["routing.key_budgets.team-a.reset_day", "greater than or equal to 1"],
        id="key-reset-0",
    ),
    pytest.param(
        '[routing.key_budgets."team-a"]\nreset_day = 31\n',
        ["routing.key_budgets.team-a.reset_day", "less than or equal to 28"],
        id="key-reset-31",
    ),
    pytest.param(
        "[testing]\nbudget_period_seconds = -1\n", ["testing.budget_period_seconds"], id="negative-test-period"
    ),
    pytest.param("[server]\nprot = 1\n", ["server.prot", "unknown key"], id="typo"),
    pytest.param("[routing\n", ["not valid TOML"], id="bad-toml"),
]


@pytest.mark.parametrize(("text", "parts"), BAD)
def test_invalid_config_names_file_key_and_fix(tmp_path, text, parts):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    message = str(err.value)
    assert message.startswith(str(path))
    for part in parts:
        assert part in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_secrets_never_appear_in_errors(tmp_path):
    path = write(tmp_path, '[[backends]]\nname = "a"\nurl = "http://h"\ntype = "openai"\napi_key_env = "K"\ntier = 7\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={"K": "sk-very-secret"})
    assert "sk-very-secret" not in str(err.value)


def test_unknown_top_level_sections_from_the_original_nexus_are_ignored(tmp_path):
    path = write(tmp_path, "[logging]\nlevel = 'info'\n")
    assert load_settings(path, environ={}).backends == []


def test_key_budgets_follow_the_global_reset_day_unless_they_set_their_own(tmp_path):
    path = write(
        tmp_path,
        '[routing.budget]\nreset_day = 10\n[routing.key_budgets."team-a"]\nreset_day = 20\n'
        '[routing.key_budgets."team-b"]\nmonthly_limit_usd = 1\n',
    )
    cal = load_settings(path, environ={}).routing.calendar()
    assert {scope: cal.rule(scope).reset_day for scope in ("global", "team-a", "team-b", "no-budget")} == {
        "global": 10, "team-a": 20, "team-b": 10, "no-budget": 10
    }


def test_knobs_for_replace_every_period_rule_and_skew_the_clock(tmp_path):
    settings = load_settings(
        write(tmp_path, '[routing.key_budgets."team-a"]\nreset_day = 20\n'),
        environ={"NEXUS_TESTING_BUDGET_PERIOD_SECONDS": "30", "NEXUS_TESTING_CLOCK_OFFSET_SECONDS": "-2"},
    )
    assert settings.testing.knobs() == {"budget_period_seconds": 30, "clock_offset_seconds": -2.0}
    cal = settings.routing.calendar(settings.testing)
    assert cal.rule("team-a") == cal.rule("global") == cal.rule("other")
    assert cal.rule("global").end(95.0) == 120.0 and cal.period("global", 95.0) == "19700101T000130Z"
    skewed = settings.testing.clock()
    assert -2.5 < skewed() - time.time() < -1.5
    assert load_settings(environ={}).testing.clock() is time.time  # production: the plain wall clock


def test_discovery_fleet_and_lifecycle_sections_take_rust_nexus_names_and_env_overrides(tmp_path):
    path = write(
        tmp_path,
        '[discovery]\nenabled = true\ngrace_period_seconds = 5\ninterfaces = ["127.0.0.1"]\n'
        "[fleet]\nauto_prewarm = true\n[lifecycle]\nkeep_alive = \"-1\"\n",
    )
    s = load_settings(path, environ={"NEXUS_DISCOVERY_SERVICE_TYPES": "_ollama._tcp.local., _x._tcp.local."})
    assert (s.discovery.enabled, s.discovery.grace_period_seconds, s.discovery.interfaces) == (True, 5, ["127.0.0.1"])
    assert s.discovery.service_types == ["_ollama._tcp.local.", "_x._tcp.local."]
    assert s.fleet.auto_prewarm and s.lifecycle.keep_alive == "-1"
    assert load_settings(None, environ={}).discovery.enabled is False  # nothing multicasts unless asked


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[discovery]\nservice_types = ["ollama"]\n', "discovery.service_types[0]"),
        ('[discovery]\ninterfaces = ["eth0"]\n', "discovery.interfaces"),
        ('[discovery]\nallowed_networks = ["lan"]\n', "discovery.allowed_networks"),
        ("[discovery]\ngrace_period_seconds = -1\n", "discovery.grace_period_seconds"),
        ('[lifecycle]\nkeep_alive = "forever"\n', "lifecycle.keep_alive"),
        ("[fleet]\nauto_prewarn = true\n", "fleet.auto_prewarn"),
        ('[[backends]]\nname = "a"\nurl = "http://h"\nsource = "mdns"\n', "backends[0].source"),
    ],
)
def test_bad_fleet_values_are_refused_naming_the_key(tmp_path, toml, named):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, toml), environ={})
    assert named in str(err.value)
