"""Discovery, the pure part: announcements seen on the network -> the discovered backends of desired state.

The discovery job (nexus/worker/discovery.py) browses mDNS once per tick and calls `reconcile` inside one
desired-state update (`nexus.core.state.update_desired`), so an operator's concurrent write is never lost.

Rules (docs/fleet.md):
- An announcement becomes a `BackendConfig` with `source = "discovered"`: its type from TXT `type` (a local
  type or `generic`; else the service type's default: `ollama` for `_ollama._tcp`, `generic` otherwise),
  its URL `http://<address>:<port>` plus TXT `api_path` (not for `ollama`, whose native API sits at the root),
  zone `restricted` for local types. An announcement that does not make a valid backend is skipped.
- Static config always wins: an announcement whose URL a static backend has is skipped, and so is a
  discovered backend of that URL (it is removed). An ignored URL is skipped and its backend removed.
- A discovered backend not seen in a tick is kept until `grace_period_seconds` after it was last seen,
  then removed. Only `source = "discovered"` backends are ever changed or removed here.
- An announced address outside `allowed_networks` (default: private and link-local ranges) is skipped: anyone
  on the link can announce, and a discovered local backend gets restricted traffic.
- At most `max_backends` discovered backends (the ones seen first stay) and never more than `LIMITS.backends`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from nexus.core.adapters.registry import LOCAL_TYPES
from nexus.core.config import LIMITS, BackendConfig, DesiredConfig, DiscoveryConfig
from nexus.core.model import BackendSource, BackendType, Zone

__all__ = ["Announcement", "DiscoveryPlan", "SeenRecord", "backend_for", "reconcile", "url_key"]

_DEFAULT_TYPE = {"_ollama._tcp.local.": BackendType.OLLAMA}
_ALLOWED_TYPES = LOCAL_TYPES | {BackendType.GENERIC}
_NAME_BAD = re.compile(r"[^A-Za-z0-9._:@-]+")
_MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class Announcement:
    """One resolved mDNS service: `instance` is the name before the service type (`gpu-box`)."""

    service_type: str
    instance: str
    address: str
    port: int
    txt: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SeenRecord:
    """What the job remembers of a discovered backend between ticks ({fleet} discovered)."""

    url: str
    service: str
    instance: str
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class DiscoveryPlan:
    desired: DesiredConfig | None  # None: desired state needs no change
    records: dict[str, SeenRecord]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # one line per announcement left out, and why


def url_key(url: str) -> str:
    """URLs compare without case in scheme and host, and without a trailing slash."""
    return url.rstrip("/").lower()


def _name(instance: str) -> str:
    name = _NAME_BAD.sub("-", instance).strip("-._:@")[:_MAX_NAME]
    return name or "discovered"


def backend_for(a: Announcement) -> BackendConfig:
    """The backend an announcement describes; ValueError (pydantic's) when it makes no valid backend."""
    raw_type = a.txt.get("type", "").strip().lower()
    kind = _DEFAULT_TYPE.get(a.service_type, BackendType.GENERIC)
    if raw_type:
        if raw_type not in {t.value for t in _ALLOWED_TYPES}:
            raise ValueError(f"TXT type {raw_type[:40]!r} is not a local server type")
        kind = BackendType(raw_type)
    host = f"[{a.address}]" if ":" in a.address else a.address
    path = a.txt.get("api_path", "").strip() if kind is not BackendType.OLLAMA else ""
    if path and not path.startswith("/"):
        path = "/" + path
    zone = Zone.RESTRICTED if kind in LOCAL_TYPES else None
    return BackendConfig(
        name=_name(a.instance),
        url=f"http://{host}:{a.port}{path.rstrip('/')}",
        type=kind,
        zone=zone,
        source=BackendSource.DISCOVERED,
    )


def _candidates(
    seen: list[Announcement], static_urls: set[str], static_names: set[str], ignored: set[str], cfg: DiscoveryConfig
) -> tuple[dict[str, tuple[BackendConfig, Announcement]], list[str]]:
    """Announcements as backends by URL key, skipping what static config or an operator claims."""
    out: dict[str, tuple[BackendConfig, Announcement]] = {}
    skipped: list[str] = []
    for a in seen:
        label = f"{a.instance}.{a.service_type}"
        if not cfg.allows(a.address):
            skipped.append(f"{label}: {a.address} is outside discovery.allowed_networks")
            continue
        try:
            b = backend_for(a)
        except (ValueError, ValidationError) as exc:
            skipped.append(f"{label}: {str(exc).splitlines()[0][:200]}")
            continue
        key = url_key(b.url)
        if key in static_urls:
            skipped.append(f"{label}: a static backend has {b.url}")
        elif key in ignored:
            skipped.append(f"{label}: {b.url} is ignored")
        elif key not in out:
            if b.name in static_names:
                b = b.model_copy(update={"name": _name(f"{b.name}-{a.port}")})
            out[key] = (b, a)
    return out, skipped


def reconcile(
    current: DesiredConfig,
    seen: list[Announcement],
    records: Mapping[str, SeenRecord],
    ignored: set[str],
    now: float,
    cfg: DiscoveryConfig,
) -> DiscoveryPlan:
    """The desired state after one browse: `seen` written as discovered backends, vanished ones kept for
    the grace period, then removed. `ignored` holds URL keys. Pure, and idempotent for equal inputs."""
    static = [b for b in current.backends if b.source is BackendSource.STATIC]
    static_names = {b.name for b in static}
    found, skipped = _candidates(seen, {url_key(b.url) for b in static}, static_names, ignored, cfg)
    by_url = {url_key(b.url): b for b in current.backends if b.source is BackendSource.DISCOVERED}
    kept: list[BackendConfig] = []
    new_records: dict[str, SeenRecord] = {}
    removed: list[str] = []
    room = min(cfg.max_backends, LIMITS.backends - len(static))
    for key, old in by_url.items():
        rec = records.get(old.name)
        if key in found:
            b, a = found.pop(key)
            # it keeps its name (a pin or an ignore may name it) and an operator's edits (tier, models...);
            # what the network says (URL, type) wins
            b = old.model_copy(update={"url": b.url, "type": b.type, "zone": old.zone or b.zone})
            first = rec.first_seen if rec else now
            new_records[old.name] = SeenRecord(b.url, a.service_type, a.instance, first, now)
        elif key in ignored or (rec is not None and now - rec.last_seen > cfg.grace_period_seconds):
            removed.append(old.name)
            continue
        else:
            b = old
            new_records[old.name] = rec or SeenRecord(old.url, "", old.name, now, now)  # grace starts now
        if len(kept) >= room:
            removed.append(old.name)
            new_records.pop(old.name, None)
            continue
        kept.append(b)
    taken = static_names | {b.name for b in kept}
    added: list[str] = []
    for b, a in found.values():
        if len(kept) >= room:
            skipped.append(f"{a.instance}.{a.service_type}: discovery.max_backends ({cfg.max_backends}) reached")
            continue
        name, n = b.name, 2
        while name in taken:
            name, n = _name(f"{b.name}-{n}"), n + 1
        b = replace_name(b, name)
        taken.add(name)
        kept.append(b)
        added.append(name)
        new_records[name] = SeenRecord(b.url, a.service_type, a.instance, now, now)
    proposed = _merge(current, kept)
    return DiscoveryPlan(
        desired=None if proposed == current else proposed,
        records=new_records,
        added=tuple(added),
        removed=tuple(removed),
        skipped=tuple(skipped),
    )


def replace_name(b: BackendConfig, name: str) -> BackendConfig:
    return b if b.name == name else b.model_copy(update={"name": name})


def _merge(current: DesiredConfig, discovered: list[BackendConfig]) -> DesiredConfig:
    """Static backends in their order, then the discovered ones by name; `current` itself when equal."""
    static = [b for b in current.backends if b.source is BackendSource.STATIC]
    backends = static + sorted(discovered, key=lambda b: b.name)
    if {b.name: b for b in backends} == {b.name: b for b in current.backends}:
        return current
    return DesiredConfig(backends=backends, routing=current.routing)
