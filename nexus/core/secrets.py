"""Backend secrets: declared by the operator in nexus.toml, referenced by backends, sent only to their hosts.

    [secrets.openai]
    env = "OPENAI_API_KEY"           # the variable holding the key (never the key itself)
    hosts = ["api.openai.com"]       # the only hosts the key is ever sent to

    [[backends]]
    name = "openai"
    url = "https://api.openai.com"
    secret = "openai"

Secrets are per-process settings, never desired state: the admin API cannot declare one or name an
environment variable, it can only reference a secret by name, and only for a backend whose URL's host is
in that secret's `hosts` (422 otherwise). The same rule is checked again when a key is about to be sent
(router nodes' upstream calls, the health worker's probes), so a backend that reached Redis some other
way still cannot carry a key to a host outside the list.

A backend in nexus.toml may still say `api_key_env = "X"` (older files): it becomes `secret = "X"`, a secret
named after the variable, bound to the hosts of the nexus.toml backends that name it. Stored desired state
of older releases (`api_key_env` in Redis) reads the same way, and so is held to the same hosts.

Reading the variable is `nexus.core.config.key_for`: config is the only module that reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.core.urls import url_host, validate_backend_url

__all__ = [
    "ENV_NAME_PATTERN",
    "SECRET_NAME_PATTERN",
    "SecretConfig",
    "SecretRefused",
    "check_backend_secret",
    "implied_secrets",
    "legacy_backend",
    "secret_allowed",
]

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SECRET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_:[]")


class SecretRefused(ValueError):
    """A key that must not be sent: its secret is not declared here, or the host is not in its list."""


class SecretConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str = Field(pattern=ENV_NAME_PATTERN, max_length=200, description="variable holding the key")
    hosts: list[str] = Field(min_length=1, max_length=100, description="hosts the key may be sent to")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for host in v:
            h = host.strip().lower()
            if not h or len(h) > 253 or not set(h) <= _HOST_CHARS or "/" in h:
                raise ValueError(f"hosts entry {host!r} is not a host name; give a bare host such as api.openai.com")
            out.append(h.strip("[]"))
        return out


def secret_allowed(name: str, url: str, secrets: Mapping[str, SecretConfig]) -> SecretConfig:
    """The secret `name` if it may be sent to `url`'s host; SecretRefused saying why not."""
    secret = secrets.get(name)
    if secret is None:
        declared = ", ".join(sorted(secrets)) or "none"
        raise SecretRefused(f"secret {name!r} is not declared in nexus.toml [secrets] (declared: {declared})")
    host = url_host(url)
    if host not in secret.hosts:
        raise SecretRefused(
            f"secret {name!r} may only be sent to {', '.join(secret.hosts)}, not to {host or 'this URL'}; "
            f"add the host to [secrets.{name}] hosts in nexus.toml if it is meant to get the key"
        )
    return secret


def check_backend_secret(backend: Any, secrets: Mapping[str, SecretConfig]) -> str | None:
    """Why `backend` (a BackendConfig) may not reference its secret, or None when it may (or has none)."""
    if backend.secret is None:
        return None
    try:
        secret_allowed(backend.secret, backend.url, secrets)
    except SecretRefused as exc:
        return f"backend {backend.name!r}: secret: {exc}"
    return None


def legacy_backend(data: Any) -> Any:
    """A backend dict of an older file or store, with `api_key_env = X` read as `secret = X`."""
    if not isinstance(data, Mapping) or "api_key_env" not in data:
        return data
    out = dict(data)
    env = out.pop("api_key_env")
    if env is None:
        return out
    if out.get("secret") not in (None, env):
        raise ValueError("give either secret or api_key_env, not both")
    out["secret"] = env
    return out


def implied_secrets(data: MutableMapping[str, Any]) -> None:
    """Rewrite the nexus.toml data in place: every backend's `api_key_env = X` becomes `secret = X`, and
    `[secrets.X]` is implied with env X and the hosts of the backends that name X."""
    backends = data.get("backends")
    if not isinstance(backends, list):
        return
    declared = data.get("secrets") or {}
    if not isinstance(declared, Mapping):
        return
    implied: dict[str, set[str]] = {}
    rewritten = []
    for b in backends:
        env = b.get("api_key_env") if isinstance(b, Mapping) else None
        if isinstance(env, str) and env:
            if env in declared:
                raise ValueError(
                    f"backend {b.get('name')!r}: api_key_env = {env!r} names a variable, and [secrets.{env}] also "
                    f'declares a secret of that name; write secret = "{env}" instead of api_key_env'
                )
            try:
                host = url_host(validate_backend_url(b.get("url")))
            except ValueError:
                host = ""  # the backend's own url error is reported by its validation
            if host:
                implied.setdefault(env, set()).add(host)
        rewritten.append(legacy_backend(b))
    data["backends"] = rewritten
    if implied:
        data["secrets"] = {**declared, **{env: {"env": env, "hosts": sorted(hosts)} for env, hosts in implied.items()}}
