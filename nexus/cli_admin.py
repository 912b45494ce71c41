"""Operator commands on the admin API: `nexus backends|budget|policies|route|nodes|health|spend ...`.

Each command is one HTTP call (stdlib urllib: nothing to start, nothing to close) to
`--admin-url` (default `admin.url`, env NEXUS_ADMIN_URL) with `--token` (default NEXUS_ADMIN_TOKEN).
Output is a human-readable table, or the API's JSON with `--json`.

Exit codes scripts can rely on:
    0 success   1 admin API unreachable or failed (5xx)   2 invalid input (usage error, 422)
    3 unauthorized (401)   4 not found (404)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

__all__ = ["EXIT_INVALID", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNAUTHORIZED", "EXIT_UNAVAILABLE", "add_commands", "call",
           "common", "out"]

EXIT_OK, EXIT_UNAVAILABLE, EXIT_INVALID, EXIT_UNAUTHORIZED, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _call(ns: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    from nexus.core.config import load_settings

    settings = load_settings(None)
    base = (ns.admin_url or settings.admin.url).rstrip("/")
    token = ns.token or settings.admin.token
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/admin/v1{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=ns.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("detail", detail)
        codes = {401: EXIT_UNAUTHORIZED, 404: EXIT_NOT_FOUND, 422: EXIT_INVALID, 400: EXIT_INVALID, 409: EXIT_INVALID}
        code = codes.get(exc.code, EXIT_UNAVAILABLE)
        raise _Failed(code, f"HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Failed(EXIT_UNAVAILABLE, f"cannot reach the admin API at {base}: {exc}") from None
    return json.loads(raw) if raw else None


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, *body])


def _out(ns: argparse.Namespace, data: Any, columns: Sequence[str] | None = None, text: str | None = None) -> None:
    if ns.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        print(text)
    elif columns is not None:
        print(_table(data, columns))


def _backends(ns: argparse.Namespace) -> None:
    if ns.action == "list":
        rows = _call(ns, "GET", "/backends")
        for r in rows:
            r["models"] = ",".join(m["name"] for m in r["models"])
            r["zone"] = r["zone_effective"]
        _out(ns, rows, ["name", "type", "zone", "tier", "priority", "max_concurrency", "url", "models"])
    elif ns.action == "add":
        body: dict[str, Any] = {
            "url": ns.url,
            "type": ns.type,
            "tier": ns.tier,
            "priority": ns.priority,
            "max_concurrency": ns.max_concurrency,
            "models": ns.model or [],
        }
        if ns.zone:
            body["zone"] = ns.zone
        if ns.secret:
            body["secret"] = ns.secret
        result = _call(ns, "PUT", f"/backends/{ns.name}", body)
        _out(ns, result, text=f"backend {ns.name} saved (config version {result['version']})")
    else:
        result = _call(ns, "DELETE", f"/backends/{ns.name}")
        _out(ns, result, text=f"backend {ns.name} removed (config version {result['version']})")


def _budget(ns: argparse.Namespace) -> None:
    if ns.action == "show":
        rows = _call(ns, "GET", "/budgets")
        for r in rows:
            r["spend_usd"] = f"{r['spend_usd']:.4f}"
            r["utilization"] = f"{r['utilization']:.1%}"
        _out(
            ns,
            rows,
            [
                "scope",
                "period",
                "spend_usd",
                "monthly_limit_usd",
                "utilization",
                "status",
                "soft_limit_percent",
                "hard_limit_action",
            ],
        )
        return
    body: dict[str, Any] = {}
    if ns.limit is not None:
        body["monthly_limit_usd"] = ns.limit
    if ns.soft is not None:
        body["soft_limit_percent"] = ns.soft
    if ns.action_on_hard is not None:
        body["hard_limit_action"] = ns.action_on_hard
    if ns.unlimited:
        body["unlimited"] = True
    if not body:
        raise _Failed(EXIT_INVALID, "nothing to set: give --limit, --soft, --hard-limit-action or --unlimited")
    result = _call(ns, "PUT", f"/budgets/{ns.scope}", body)
    _out(ns, result, text=f"budget {ns.scope} saved (config version {result['version']})")


def _policies(ns: argparse.Namespace) -> None:
    current = _call(ns, "GET", "/policies")
    if ns.action == "list":
        _out(ns, current, ["model_pattern", "privacy", "min_tier", "max_cost_per_request", "fallback_allowed"])
        return
    if ns.action == "add":
        policy: dict[str, Any] = {"model_pattern": ns.pattern, "privacy": ns.privacy}
        if ns.min_tier is not None:
            policy["min_tier"] = ns.min_tier
        if ns.max_cost is not None:
            policy["max_cost_per_request"] = ns.max_cost
        if ns.no_fallback:
            policy["fallback_allowed"] = False
        new = [p for p in current if p["model_pattern"] != ns.pattern] + [policy]
    elif ns.action == "remove":
        new = [p for p in current if p["model_pattern"] != ns.pattern]
        if len(new) == len(current):
            raise _Failed(EXIT_NOT_FOUND, f"no policy with model_pattern {ns.pattern!r}")
    else:
        with open(ns.file, encoding="utf-8") as fh:
            new = json.load(fh)
    result = _call(ns, "PUT", "/policies", new)
    _out(ns, result, text=f"policies saved (config version {result['version']})")


def _explain(ns: argparse.Namespace) -> None:
    headers = {}
    for h in ns.header or []:
        name, sep, value = h.partition(":")
        if not sep:
            raise _Failed(EXIT_INVALID, f"--header {h!r}: use NAME:VALUE, e.g. X-Nexus-Flexible:true")
        headers[name.strip()] = value.strip()
    request = {"model": ns.model, "messages": [{"role": "user", "content": ns.prompt}]}
    if ns.max_tokens is not None:
        request["max_tokens"] = ns.max_tokens
    out = _call(ns, "POST", "/route/explain", {"request": request, "headers": headers})
    if ns.json:
        _out(ns, out)
        return
    lines = [f"model {out['requested_model']} -> {out['resolved_model']}: {out['decision'].upper()}"]
    if out["decision"] == "route":
        lines.append(
            f"  backend {out['backend']} ({out['route_reason']}), alternatives: {', '.join(out['alternatives']) or '-'}"
        )
    policy = out.get("matched_policy")
    lines.append(f"  policy: {policy['model_pattern'] if policy else '-'}   budget: {out['budget_status']}")
    for step in out["steps"]:
        lines.append(f"  {step['reconciler']:<20} remaining {step['remaining']}")
        lines.extend(f"      x {r['agent_id']}: {r['reason']}  -> {r['suggested_action']}" for r in step["excluded"])
    lines.extend(f"  warning: {w}" for w in out["warnings"])
    print("\n".join(lines))


def _nodes(ns: argparse.Namespace) -> None:
    rows = _call(ns, "GET", "/nodes")
    for r in rows:
        # what an operator must look at: a desired state the node could not build (it routes on an older one)
        failing = r.get("failing_version")
        problems = [f"cannot build v{failing}: {r.get('snapshot_error')}"] if failing else []
        if r.get("state_lost"):
            problems.append(f"STATE LOST: {r['state_lost']}")
        r["problem"] = "; ".join(problems)
    columns = ["node", "status", "last_seen_seconds", "snapshot_version", "snapshot_age_seconds", "inflight",
               "queue_depth", "redis_ok", "problem"]
    _out(ns, rows, columns)


call, out = _call, _out  # for nexus.cli_fleet


def _simple(path: str, columns: Sequence[str]):
    def run(ns: argparse.Namespace) -> None:
        _out(ns, _call(ns, "GET", path), columns)

    return run


def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every operator command takes."""
    p.add_argument("--admin-url", help="admin API base URL (default: admin.url / NEXUS_ADMIN_URL)")
    p.add_argument("--token", help="admin token (default: NEXUS_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds")
    p.set_defaults(admin_command=True)
    return p


def add_commands(sub: Any) -> None:
    from nexus import cli_fleet

    cli_fleet.add_commands(sub)

    b = common(sub.add_parser("backends", help="list, add or remove backends"))
    b.add_argument("action", choices=["list", "add", "remove"])
    b.add_argument("name", nargs="?")
    b.add_argument("--url")
    b.add_argument("--type", default="generic")
    b.add_argument("--zone")
    b.add_argument("--tier", type=int, default=1)
    b.add_argument("--priority", type=int, default=1)
    b.add_argument("--max-concurrency", type=int, default=8)
    b.add_argument("--secret", help="a secret declared in nexus.toml [secrets] (its key goes only to its hosts)")
    b.add_argument("--model", action="append", help="repeatable")
    b.set_defaults(func=_backends, needs=lambda ns: (ns.action == "list" or ns.name) and (ns.action != "add" or ns.url))

    g = common(sub.add_parser("budget", help="show budgets or set one"))
    g.add_argument("action", choices=["show", "set"])
    g.add_argument("scope", nargs="?", default="global", help="global or an API key id")
    g.add_argument("--limit", type=float, help="monthly_limit_usd")
    g.add_argument("--soft", type=float, help="soft_limit_percent (0.75 or 75)")
    g.add_argument("--hard-limit-action", dest="action_on_hard", choices=["warn", "block_cloud", "block_all"])
    g.add_argument("--unlimited", action="store_true", help="remove the limit")
    g.set_defaults(func=_budget, needs=lambda ns: True)

    p = common(sub.add_parser("policies", help="list, add, remove or replace traffic policies"))
    p.add_argument("action", choices=["list", "add", "remove", "set"])
    p.add_argument("pattern", nargs="?", help="model_pattern (add/remove) or a JSON file (set)")
    p.add_argument("--privacy", default="unrestricted", choices=["restricted", "unrestricted"])
    p.add_argument("--min-tier", type=int)
    p.add_argument("--max-cost", type=float, help="max_cost_per_request (USD)")
    p.add_argument("--no-fallback", action="store_true")
    p.set_defaults(func=_policies, needs=lambda ns: ns.action == "list" or ns.pattern)

    r = common(sub.add_parser("route", help="explain how a request would be routed (dry run)"))
    r.add_argument("action", choices=["explain"])
    r.add_argument("--model", required=True)
    r.add_argument("--prompt", default="hello")
    r.add_argument("--max-tokens", type=int)
    r.add_argument("--header", action="append", help="NAME:VALUE, repeatable (e.g. X-Nexus-Flexible:true)")
    r.set_defaults(func=_explain, needs=lambda ns: True)

    n = common(sub.add_parser("nodes", help="router replicas with snapshot version and age"))
    n.set_defaults(func=_nodes, needs=lambda ns: True)
    sp = common(sub.add_parser("spend", help="spend of the current (or --period YYYY-MM) budget period"))
    sp.add_argument("--period")

    def spend(ns: argparse.Namespace) -> None:
        out = _call(ns, "GET", "/spend" + (f"?period={ns.period}" if ns.period else ""))
        rows = [{"backend": k, "usd": f"{v['usd']:.4f}", "requests": v["requests"], "errors": v["errors"]}
                for k, v in sorted(out.get("by_backend", {}).items())]
        head = f"period {out['period']}: ${out['total_usd']:.4f} over {out['requests']} requests"
        _out(ns, out, text=head + "\n" + _table(rows, ["backend", "usd", "requests", "errors"]))

    sp.set_defaults(func=spend, needs=lambda ns: True)
    from nexus.cli_tenancy import add_tenancy_commands

    add_tenancy_commands(sub, common)
    h = common(sub.add_parser("health", help="backends with health and quality"))
    h.set_defaults(func=_simple("/health", ["name", "type", "zone", "health", "latency_ema_ms"]), needs=lambda ns: True)


def run(ns: argparse.Namespace) -> int:
    """Run an operator command; returns the exit code."""
    if hasattr(ns, "pattern") and ns.func is _policies and ns.action == "set":
        ns.file = ns.pattern
    if not ns.needs(ns):
        print(
            f"nexus: missing arguments for this command; see `nexus {sys.argv[1] if len(sys.argv) > 1 else ''} -h`",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        code = ns.func(ns)  # None, or an exit code of its own (`nexus models` listing a gateway's models)
    except _Failed as exc:
        print(f"nexus: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"nexus: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return code or EXIT_OK
