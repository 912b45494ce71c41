"""Operator commands for tenants: `nexus keys create|list|show|update|revoke|rotate` and
`nexus teams put|list|show|delete`, one admin API call each (see nexus.cli_admin for flags and exit codes).

A created or rotated key's secret is printed once; nothing else ever shows it.
"""

from __future__ import annotations

import argparse
from typing import Any

from nexus import cli_admin

__all__ = ["add_tenancy_commands"]

_LIMIT_FLAGS = ("models", "privacy", "max_tier", "priority", "rpm", "tpm")


def _limits(ns: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in _LIMIT_FLAGS:
        value = getattr(ns, name, None)
        if value is not None:
            body[name] = value
    if getattr(ns, "budget", None) is not None:
        body["budget"] = {"monthly_limit_usd": ns.budget, "hard_limit_action": ns.hard_limit_action or "block_all"}
    if getattr(ns, "metadata", None):
        body["metadata"] = dict(m.split("=", 1) for m in ns.metadata)
    return body


def _row(r: dict[str, Any]) -> dict[str, Any]:
    u = r.get("usage") or {}
    return {
        **r,
        "models": ",".join(r.get("models") or []) or "*",
        "spend_usd": f"{u.get('spend_usd', 0.0):.4f}",
        "rpm_used": u.get("rpm_used"),
        "tpm_used": u.get("tpm_used"),
    }


_KEY_COLUMNS = ["id", "name", "team", "status", "models", "rpm", "rpm_used", "tpm", "tpm_used", "spend_usd"]


def _keys(ns: argparse.Namespace) -> None:
    call, out = cli_admin._call, cli_admin._out
    if ns.action == "list":
        rows = call(ns, "GET", "/keys")
        out(ns, rows, text=cli_admin._table([_row(r) for r in rows], _KEY_COLUMNS))
        return
    if ns.action == "create":
        body = {"name": ns.name, **_limits(ns)}
        if ns.team:
            body["team"] = ns.team
        if ns.expires_at:
            body["expires_at"] = ns.expires_at
        r = call(ns, "POST", "/keys", body)
        out(ns, r, text=f"key {r['id']} created; its secret (shown once, store it now):\n{r['key']}")
        return
    path = f"/keys/{ns.id}"
    if ns.action == "show":
        r = call(ns, "GET", path)
    elif ns.action == "update":
        body = _limits(ns)
        if ns.team is not None:
            body["team"] = ns.team or None
        r = call(ns, "PATCH", path, body)
    elif ns.action == "revoke":
        r = call(ns, "DELETE", path)
    else:
        r = call(ns, "POST", path + "/rotate", {"grace_seconds": ns.grace_seconds})
        out(ns, r, text=f"key {r['id']} rotated; the old secret works until {r['previous_valid_until']}; "
                        f"new secret (shown once):\n{r['key']}")
        return
    out(ns, r, text=cli_admin._table([_row(r)], _KEY_COLUMNS))


def _teams(ns: argparse.Namespace) -> None:
    call, out = cli_admin._call, cli_admin._out
    columns = ["name", "keys", "models", "rpm", "rpm_used", "tpm", "tpm_used", "spend_usd"]
    if ns.action == "list":
        rows = call(ns, "GET", "/teams")
        out(ns, rows, text=cli_admin._table([_row(r) for r in rows], columns))
    elif ns.action == "show":
        r = call(ns, "GET", f"/teams/{ns.name}")
        out(ns, r, text=cli_admin._table([_row(r)], columns))
    elif ns.action == "put":
        r = call(ns, "PUT", f"/teams/{ns.name}", _limits(ns))
        out(ns, r, text=f"team {ns.name} saved (config version {r['version']})")
    else:
        r = call(ns, "DELETE", f"/teams/{ns.name}")
        out(ns, r, text=f"team {ns.name} removed (config version {r['version']})")


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=lambda v: [m for m in v.split(",") if m], help="allowed model globs, a,b,...")
    p.add_argument("--privacy", choices=["restricted"], help="force restricted-zone backends")
    p.add_argument("--max-tier", type=int)
    p.add_argument("--priority", choices=["high", "normal"])
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--budget", type=float, help="monthly_limit_usd")
    p.add_argument("--hard-limit-action", choices=["warn", "block_cloud", "block_all"])
    p.add_argument("--metadata", action="append", help="KEY=VALUE, repeatable")


def add_tenancy_commands(sub: Any, common: Any) -> None:
    k = common(sub.add_parser("keys", help="virtual client keys: create, list, show, update, revoke, rotate"))
    k.add_argument("action", choices=["create", "list", "show", "update", "revoke", "rotate"])
    k.add_argument("id", nargs="?", help="the key id (show, update, revoke, rotate)")
    k.add_argument("--name", help="create: the key's name")
    k.add_argument("--team")
    k.add_argument("--expires-at", help="unix seconds or ISO 8601")
    k.add_argument("--grace-seconds", type=float, default=3600.0, help="rotate: how long the old secret works")
    _limit_arguments(k)
    k.set_defaults(func=_keys, needs=lambda ns: (ns.action == "list") or (ns.action == "create" and ns.name)
                   or (ns.action not in ("list", "create") and ns.id))

    t = common(sub.add_parser("teams", help="teams and their limits: put, list, show, delete"))
    t.add_argument("action", choices=["put", "list", "show", "delete"])
    t.add_argument("name", nargs="?")
    _limit_arguments(t)
    t.set_defaults(func=_teams, needs=lambda ns: ns.action == "list" or ns.name)
