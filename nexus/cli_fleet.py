"""Operator commands for the fleet: `nexus models list|load|unload|migrate`, `nexus discovery list|pin|ignore`.

One admin API call each (nexus.cli_admin's plumbing and exit codes); `load`, `unload` and `migrate` print the
operation and, with `--wait`, poll it until it is done (exit 0) or failed (exit 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from nexus.cli_admin import call, common, out
from nexus.cli_tools import gateway_models

__all__ = ["add_commands"]


def _wait(ns: argparse.Namespace, op: dict[str, Any]) -> None:
    deadline = time.monotonic() + ns.wait_seconds
    while op["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.5)
        op = call(ns, "GET", f"/models/ops/{op['id']}")
    out(ns, op, text=f"{op['kind']} {op['model']}: {op['state']}" + (f" ({op['error']})" if op.get("error") else ""))
    if op["state"] != "done":
        raise SystemExit(1)


def _models(ns: argparse.Namespace) -> int | None:
    if ns.action is None:
        return gateway_models(ns)
    if ns.action == "list":
        out(ns, call(ns, "GET", "/models")["models"], ["backend", "model", "state", "size_vram", "expires_at"])
        return
    if ns.action == "migrate":
        body: dict[str, Any] = {"model": ns.model, "from": ns.source, "to": ns.target}
    else:
        body = {"backend": ns.backend, "model": ns.model}
    op = call(ns, "POST", f"/models/{ns.action}", body)
    if ns.wait:
        _wait(ns, op)
    else:
        out(ns, op, text=f"{op['kind']} {op['model']}: {op['state']} (operation {op['id']})")


def _discovery(ns: argparse.Namespace) -> None:
    if ns.action == "list":
        data = call(ns, "GET", "/discovery")
        out(ns, data["backends"], ["name", "url", "type", "service", "last_seen"])
        if not ns.json and data["ignored"]:
            print("ignored: " + ", ".join(i["url"] for i in data["ignored"]))
        return
    result = call(ns, "POST", f"/discovery/{ns.name}/{ns.action}")
    out(ns, result, text=f"{ns.name}: {'pinned (static now)' if ns.action == 'pin' else 'ignored'} "
                         f"(config version {result['version']})")


def add_commands(sub: Any) -> None:
    m = common(sub.add_parser("models", help="the models a gateway serves (no action, --url); list: which is loaded "
                              "where; load, unload or migrate (Ollama)"))
    m.add_argument("action", nargs="?", choices=["list", "load", "unload", "migrate"])
    m.add_argument("--url", default="http://127.0.0.1:8000", help="no action: the gateway's base URL")
    m.add_argument("--api-key", help="no action: a client key, when the gateway requires one")
    m.add_argument("model", nargs="?")
    m.add_argument("--backend", help="load/unload: the Ollama backend")
    m.add_argument("--from", dest="source", help="migrate: the backend to unload it from")
    m.add_argument("--to", dest="target", help="migrate: the backend to load it on first")
    m.add_argument("--wait", action="store_true", help="wait until the operation is done or failed")
    m.add_argument("--wait-seconds", type=float, default=900.0)

    def models_needs(ns: argparse.Namespace) -> bool:
        if ns.action in (None, "list"):
            return True
        if ns.action == "migrate":
            return bool(ns.model and ns.source and ns.target)
        return bool(ns.model and ns.backend)

    m.set_defaults(func=_models, needs=models_needs)
    d = common(sub.add_parser("discovery", help="discovered backends; pin (make static) or ignore one"))
    d.add_argument("action", choices=["list", "pin", "ignore"])
    d.add_argument("name", nargs="?")
    d.set_defaults(func=_discovery, needs=lambda ns: ns.action == "list" or bool(ns.name))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `nexus models` or `nexus discovery`")
