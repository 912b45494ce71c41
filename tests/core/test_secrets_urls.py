"""Backend URLs are validated strictly and secrets go only to the hosts the operator listed (issue 12,
findings 2 and 3): the pure rules, and how nexus.toml declares and implies secrets."""

from __future__ import annotations

import pytest

from nexus.core.config import BackendConfig, key_for, load_settings
from nexus.core.errors import ConfigError
from nexus.core.model import HealthState
from nexus.core.pipeline.explain import rejection_context
from nexus.core.secrets import SecretConfig, SecretRefused
from nexus.core.urls import redact_url, validate_backend_url
from tests.core.pipeline.helpers import raw_backend, run, snapshot


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("http://user:pw@h:1", "credentials", id="userinfo"),
        pytest.param("http://:pw@h", "credentials", id="password-only"),
        pytest.param("http://h:0", "1 to 65535", id="port-0"),
        pytest.param("http://h:65536", "not a valid URL", id="port-65536"),
        pytest.param("http://h:80x", "not a valid URL", id="port-not-a-number"),
        pytest.param("http://h:", "1 to 65535", id="empty-port"),
        pytest.param("http://[::1:80", "not a valid URL", id="unbalanced-bracket"),
        pytest.param("http://h]:80", "not a valid URL", id="stray-bracket"),
        pytest.param("http://h/%zz", "percent escape", id="bad-escape"),
        pytest.param("http://h/a%4", "percent escape", id="short-escape"),
        pytest.param("http://h/a b", "whitespace", id="space"),
        pytest.param("http://h/\x00", "control", id="nul"),
        pytest.param("http://h/x?key=1", "query", id="query"),
        pytest.param("http://h#frag", "query or fragment", id="fragment"),
        pytest.param("ftp://h", "http:// or https://", id="scheme"),
        pytest.param("http://", "host", id="no-host"),
        pytest.param("http://-h-:1", "host", id="bad-label"),
        pytest.param("http://h/" + "a" * 3000, "longer", id="too-long"),
    ],
)
def test_bad_backend_urls_are_refused_saying_why(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as err:
        validate_backend_url(url)
    assert "pw" not in str(err.value)  # the message never repeats the URL


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("HTTPS://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("http://[::1]:8080/base", "http://[::1]:8080/base"),
        ("http://gpu-box.lan:1/a%20b", "http://gpu-box.lan:1/a%20b"),
    ],
)
def test_good_backend_urls_are_normalised(url: str, normal: str) -> None:
    assert validate_backend_url(url) == normal


def test_redact_url_drops_userinfo() -> None:
    assert redact_url("http://user:secret@h:1/v1") == "http://h:1/v1"


def test_an_unhealthy_backend_reason_never_carries_its_url() -> None:
    # A backend that came from somewhere older than the URL validation: its suggested action is sent to
    # unauthenticated clients in a 503, so it must name the backend, never repeat the URL.
    bad = raw_backend("gpu", url="http://admin:hunter2@10.0.0.5:8000")
    decision = run(snapshot([bad], health={"gpu": HealthState.UNHEALTHY}, validate=False))
    text = repr(rejection_context(decision)) + repr(decision.reasons)
    assert "hunter2" not in text and "admin:" not in text
    assert "check backend gpu" in text


SECRETS = {"openai": SecretConfig(env="OPENAI_API_KEY", hosts=["api.openai.com"])}


def test_a_key_goes_only_to_the_hosts_of_its_secret() -> None:
    env = {"OPENAI_API_KEY": "sk-real"}
    assert key_for("openai", "https://api.openai.com/v1", SECRETS, env) == "sk-real"
    assert key_for(None, "https://evil.example", SECRETS, env) is None
    with pytest.raises(SecretRefused, match=r"only be sent to api\.openai\.com, not to evil\.example"):
        key_for("openai", "https://evil.example", SECRETS, env)
    with pytest.raises(SecretRefused, match="not declared"):
        key_for("PATH", "https://api.openai.com", SECRETS, env)


def test_backend_bodies_may_not_name_environment_variables() -> None:
    with pytest.raises(ValueError, match="api_key_env names an environment variable"):
        BackendConfig.model_validate({"name": "x", "url": "http://h:1", "api_key_env": "OPENAI_API_KEY"})


def write(tmp_path, text: str):
    path = tmp_path / "nexus.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_api_key_env_in_nexus_toml_implies_a_secret_bound_to_the_backends_own_host(tmp_path) -> None:
    path = write(
        tmp_path,
        '[[backends]]\nname = "oa"\nurl = "https://api.openai.com/v1"\ntype = "openai"\n'
        'api_key_env = "OPENAI_API_KEY"\n'
        '[[backends]]\nname = "oa2"\nurl = "https://eu.api.openai.com"\ntype = "openai"\n'
        'api_key_env = "OPENAI_API_KEY"\n',
    )
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-x"})
    assert [b.secret for b in settings.backends] == ["OPENAI_API_KEY", "OPENAI_API_KEY"]
    assert settings.secrets["OPENAI_API_KEY"].hosts == ["api.openai.com", "eu.api.openai.com"]
    assert settings.secrets["OPENAI_API_KEY"].env == "OPENAI_API_KEY"


def test_declared_secrets_are_referenced_by_name_and_checked_against_the_url(tmp_path) -> None:
    ok = write(
        tmp_path,
        '[secrets.openai]\nenv = "OPENAI_API_KEY"\nhosts = ["api.openai.com"]\n'
        '[[backends]]\nname = "oa"\nurl = "https://api.openai.com"\ntype = "openai"\nsecret = "openai"\n',
    )
    assert load_settings(ok, environ={"OPENAI_API_KEY": "sk"}).backends[0].secret == "openai"
    bad = write(
        tmp_path,
        '[secrets.openai]\nenv = "OPENAI_API_KEY"\nhosts = ["api.openai.com"]\n'
        '[[backends]]\nname = "oa"\nurl = "https://elsewhere.example"\ntype = "openai"\nsecret = "openai"\n',
    )
    with pytest.raises(ConfigError, match=r"may only be sent to api\.openai\.com, not to elsewhere\.example"):
        load_settings(bad, environ={"OPENAI_API_KEY": "sk"})
    undeclared = write(tmp_path, '[[backends]]\nname = "oa"\nurl = "https://h"\ntype = "openai"\nsecret = "nope"\n')
    with pytest.raises(ConfigError, match="secret 'nope' is not declared"):
        load_settings(undeclared, environ={})
