"""The discovery job: browse mDNS for local inference servers, write them into desired state.

One tick: take the cluster's discovery lease (so N workers never browse at once, even when a slow tick
overlaps the next one), browse `[discovery] service_types` for `browse_seconds` with python-zeroconf on
`[discovery] interfaces`, resolve each service (addresses, port, TXT), then reconcile desired state in one
update (`nexus.core.fleet.discovery.reconcile`, pure) and store what was seen ({fleet} discovered).

Liveness does not rely on mDNS record expiry: a server that dies without saying goodbye keeps its records
in other caches for their TTL (about 19 minutes for zeroconf's defaults). Every tick browses with a fresh
zeroconf instance and an empty cache, so a server is "seen" only when it answers that tick's queries;
one that stops answering is removed `grace_period_seconds` after its last answer.

Network: zeroconf binds to the listed interface addresses only (empty: every interface); nothing is sent
unless `[discovery] enabled = true`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from zeroconf import BadTypeInNameException, InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nexus.core.config import DesiredConfig, DiscoveryConfig, NexusSettings
from nexus.core.fleet.discovery import Announcement, DiscoveryPlan, reconcile
from nexus.core.fleet.store import Lease, read_ignored, read_seen, write_seen
from nexus.core.state import read_desired, update_desired
from nexus.worker.jobs import ticked

__all__ = ["DISCOVERY_JOB", "browse", "discovery_job", "run_discovery"]

log = logging.getLogger("nexus.worker.discovery")

DISCOVERY_JOB = "nexus.discovery"
_LEASE = "discovery"
_MAX_TXT = 1024  # characters of one TXT value kept


def _announcement(info: AsyncServiceInfo, service_type: str) -> Announcement | None:
    addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
    if not addresses or not info.port:
        return None
    txt: dict[str, str] = {}
    for k, v in (info.properties or {}).items():
        if isinstance(k, bytes) and isinstance(v, bytes):
            txt[k.decode(errors="replace").lower()] = v.decode(errors="replace")[:_MAX_TXT]
    instance = info.name.removesuffix("." + service_type).removesuffix(service_type)
    return Announcement(service_type, instance, addresses[0], int(info.port), txt)


async def browse(cfg: DiscoveryConfig, zc: Zeroconf | None = None) -> list[Announcement]:
    """Every service of `cfg.service_types` that answers within `cfg.browse_seconds`, resolved.
    `zc` is for tests that inject announcements at the listener level; by default a fresh instance."""
    own = zc is None
    azc = AsyncZeroconf(interfaces=cfg.interfaces or InterfaceChoice.All, ip_version=IPVersion.V4Only) if own else None
    zeroconf = azc.zeroconf if azc is not None else zc
    assert zeroconf is not None
    found: dict[str, str] = {}  # full name -> service type

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed and len(found) < cfg.max_backends:
            found[name] = service_type

    browser = AsyncServiceBrowser(zeroconf, list(cfg.service_types), handlers=[on_change])
    try:
        await asyncio.sleep(cfg.browse_seconds)  # listening for answers: the browse window itself
        infos = [(AsyncServiceInfo(t, n), t) for n, t in found.items()]
        timeout_ms = max(200, int(cfg.browse_seconds * 1000))
        asks = (i.async_request(zeroconf, timeout_ms) for i, _ in infos)
        results = await asyncio.gather(*asks, return_exceptions=True)
    finally:
        await browser.async_cancel()
        if azc is not None:
            await azc.async_close()
    out = []
    for (info, service_type), ok in zip(infos, results, strict=True):
        if isinstance(ok, BadTypeInNameException | ValueError):
            log.info("skipping the malformed service %r: %s", info.name[:120], ok)
        elif ok is True and (a := _announcement(info, service_type)) is not None:
            out.append(a)
    return sorted(out, key=lambda a: (a.instance, a.service_type))


async def run_discovery(
    redis: Redis,
    settings: NexusSettings,
    clock: Callable[[], float] = time.time,
    seen: list[Announcement] | None = None,
) -> dict[str, Any]:
    """One discovery tick under the cluster's lease; `seen` replaces the browse (tests, injected)."""
    cfg = settings.discovery
    lease = Lease(redis, _LEASE, cfg.browse_seconds * 4 + 30)
    if not await lease.acquire():
        return {"skipped": "another worker is browsing"}
    try:
        announcements = await browse(cfg) if seen is None else seen
        records = await read_seen(redis)
        ignored = set(await read_ignored(redis))
        now = clock()
        plans: list[DiscoveryPlan] = []

        def change(current: DesiredConfig) -> DesiredConfig | None:
            plans.append(reconcile(current, announcements, records, ignored, now, cfg))
            return plans[-1].desired

        # the records first, so a reader never finds a new backend without them (another unit: no transaction
        # spans both); the update below recomputes against the state it commits on, and its records win
        _, current = await read_desired(redis)
        await write_seen(redis, reconcile(current, announcements, records, ignored, now, cfg).records)
        await update_desired(redis, change, "discovery")
        plan = plans[-1]
        await write_seen(redis, plan.records)
    finally:
        await lease.release()
    for name in plan.added:
        log.info("discovered backend %s at %s", name, plan.records[name].url)
    for name in plan.removed:
        log.warning("discovered backend %s is gone (not seen for %gs); removed", name, cfg.grace_period_seconds)
    for line in plan.skipped:
        log.info("discovery skipped %s", line)
    return {"seen": len(announcements), "added": list(plan.added), "removed": list(plan.removed),
            "skipped": len(plan.skipped)}


async def discovery_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return await ticked(ctx, DISCOVERY_JOB, lambda wc: run_discovery(ctx["redis"], wc.settings, wc.clock))
