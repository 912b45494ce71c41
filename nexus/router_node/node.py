"""One router node: the components a gateway replica owns, and their lifecycle.

`RouterNode.start` seeds the desired state from the TOML if Redis has none, loads the first snapshot
(tolerating Redis being away: the node then starts unready and keeps trying), and starts the
background tasks: snapshot refresh (events + poll), telemetry flush (records, in-flight gauges, live
spend; then idle leases go back and the spend is re-applied), heartbeat. `stop` turns readiness off,
drains in-flight requests up to a deadline, cancels the tasks, flushes telemetry one last time and closes
the upstream pool.

The snapshot requests route from is the refreshed one with the budgets' spend replaced by the live
spend this node knows (Redis live spend + its own unflushed records), rebuilt only when either changes.
What it knows is one value, the spend ledger (`nexus.core.ledger`), held in a cell that the telemetry
buffer and the lease book both move on; the node reads it, nothing calls back into the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from redis.asyncio import Redis

from nexus.core.config import GLOBAL_SCOPE, NexusSettings, resolve_secret
from nexus.core.errors import StateError
from nexus.core.ledger import NO_RESERVATION, LedgerCell, Reservation
from nexus.core.model import HardLimitAction, HealthState
from nexus.core.observed import read_wire_facts, write_wire_fact
from nexus.core.periods import BudgetCalendar
from nexus.core.rates import window_ms
from nexus.core.reservations import settle_node
from nexus.core.snapshot import Snapshot
from nexus.core.state import seed_desired
from nexus.core.telemetry_store import NodeHeartbeat, Outcome, TelemetryRecord, write_heartbeat
from nexus.core.tenancy import team_scope
from nexus.core.tenant_store import load_hash_secret
from nexus.router_node.breaker import Breakers, BreakerSettings
from nexus.router_node.leases import LeaseBook
from nexus.router_node.load import LoadTracker
from nexus.router_node.metrics import Metrics
from nexus.router_node.observability import Observability, note_record
from nexus.router_node.queue import RequestQueue
from nexus.router_node.rates import RateGate
from nexus.router_node.refresher import SnapshotRefresher
from nexus.router_node.telemetry import Telemetry
from nexus.router_node.tenants import TenantBook
from nexus.router_node.upstream import Upstream

__all__ = ["RouterNode", "default_node_id"]

log = logging.getLogger("nexus.router")
HEARTBEAT_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0


def default_node_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class RouterNode:
    def __init__(
        self,
        settings: NexusSettings,
        redis: Redis,
        *,
        node_id: str | None = None,
        seed: bool = True,
        rng_seed: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        # the wall clock of this node's timestamps and budget periods ([testing] may skew it)
        self.clock = clock or settings.testing.clock()
        self.node_id = node_id or default_node_id()
        self._seed = seed
        self.started_at = time.time()
        self.metrics = Metrics()
        self.load = LoadTracker()
        self.queue = RequestQueue(settings.queue.max_size, settings.queue.enabled)
        self.upstream = Upstream(settings.server, settings.secrets, on_learned=self._learned_no_stream_options)
        self._warned: dict[str, float] = {}
        self._pending_facts: set[str] = set()
        self.rng = random.Random(rng_seed)
        self._sequence = itertools.count()
        # who may call (nexus.router_node.tenants): managed keys and teams from the snapshot's desired state,
        # plus the static [server] api_keys; and their rate limits (nexus.router_node.rates)
        self.tenants = TenantBook(sorted(self._key_digests()), self.clock)
        self._tenants_from: object = None
        self.rates = RateGate(redis, self.node_id, window_ms=window_ms(settings.testing.rate_window_seconds))
        self.refresher = SnapshotRefresher(
            redis,
            settings,
            self._on_snapshot,
            on_build_failure=self.metrics.snapshot_build_failures.inc,
        )
        self.ledger = LedgerCell()
        self.telemetry = Telemetry(
            redis,
            self.node_id,
            self.load,
            interval_ms=settings.telemetry.flush_interval_ms,
            max_records=settings.telemetry.buffer_max_records,
            calendar=self._calendar,
            clock=self.clock,
            on_dropped=self.metrics.telemetry_dropped.inc,
            cell=self.ledger,
            replica_acks=settings.redis.replica_acks,
            ack_timeout_ms=settings.redis.replica_ack_timeout_ms,
            on_unreplicated=self.metrics.telemetry_unreplicated.inc,
            on_quarantined=self.metrics.telemetry_quarantined.inc,
        )
        self.leases = LeaseBook(redis, self.node_id, self.ledger)
        self.admitted = self.telemetry.admitted
        self._base: Snapshot | None = None
        self.breakers = Breakers(BreakerSettings.of(settings.quality), time.time)
        self._effective: Snapshot | None = None
        self._spend_seen: tuple = ()
        self._tasks: list[asyncio.Task] = []
        self.draining = False
        # inference requests being served (parsed, queued, or upstream), and whether new ones are taken: a
        # draining node stops taking them once balancers had drain_delay_seconds to notice /ready (server.py)
        self.active = 0
        self.accepting = True
        self.observability = Observability(settings, self.metrics, redis, self.node_id)

    # -- configuration-derived ------------------------------------------------------------------------
    def _key_digests(self) -> frozenset[str]:
        import hashlib

        server = self.settings.server
        digests = {k.removeprefix("sha256:") for k in server.api_keys}
        if server.api_keys_env:
            raw = resolve_secret(server.api_keys_env) or ""
            digests.update(hashlib.sha256(k.strip().encode()).hexdigest() for k in raw.split(",") if k.strip())
        return frozenset(digests)

    def _calendar(self) -> BudgetCalendar:
        """Every budget scope's period rule: desired state, like the limits (the admin API may change a reset
        day); the TOML until a snapshot loads."""
        base = self._base
        if base is None or GLOBAL_SCOPE not in base.budgets:
            return self.settings.desired().calendar(self.settings.testing)
        rules = {scope: state.rule for scope, state in base.budgets.items()}
        return BudgetCalendar(rules[GLOBAL_SCOPE], rules)

    def next_sequence(self) -> int:
        return next(self._sequence)

    # -- the snapshot requests route from -------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot | None:
        return self._effective

    @property
    def ready(self) -> bool:
        return self._effective is not None and not self.draining

    def _on_snapshot(self, snap: Snapshot) -> None:
        self._base = snap
        desired = self.refresher.desired
        if desired is not None and desired is not self._tenants_from:  # a new config: keys or teams may differ
            self._tenants_from = desired
            self.tenants.rebuild(desired.keys, desired.teams)
        self.breakers.set_unhealthy({
            b.name: b.health_at or 0.0 for b in snap.backends.values() if b.health is HealthState.UNHEALTHY
        })
        self._spend_seen = ()
        self._apply_spend()
        self.queue.notify()

    def _apply_spend(self) -> None:
        base = self._base
        if base is None:
            return
        ledger = self.ledger.ledger
        periods = ledger.periods
        # what the cluster spent or leased, less the lease this node holds unused (that is still its to spend)
        seen = tuple((scope, periods.get(scope), ledger.committed(scope)) for scope in base.budgets)
        if seen == self._spend_seen and self._effective is not None:
            return
        self._spend_seen = seen
        budgets = {}
        for (scope, state), (_, _, live) in zip(base.budgets.items(), seen, strict=True):
            period = periods.get(scope) or state.period
            # the worker's observation counts only while it is of the current period: after a rollover the
            # new period starts from the live counter (zero), not from the last period's total
            observed = state.spend_usd if state.period == period else 0.0
            budgets[scope] = replace(state, spend_usd=max(observed, live), period=period)
        self._effective = replace(base, budgets=MappingProxyType(budgets))

    # -- passive health and circuit breakers: what this node saw of each backend (nexus/router_node/breaker.py) --
    def note_upstream(self, backend: str, ok: bool, why: str = "", retry_after: float | None = None,
                      rate_limited: bool = False) -> None:
        if ok:
            self.breakers.succeeded(backend)
        elif rate_limited:
            self.breakers.rate_limited(backend, retry_after)
        else:
            self.breakers.failed(backend, why)

    def warn_once(self, topic: str, message: str, *args: object) -> None:
        """A warning at most once a minute per topic: a misbehaving backend must not flood the log."""
        now = time.monotonic()
        if now - self._warned.get(topic, -WARN_EVERY_SECONDS) >= WARN_EVERY_SECONDS:
            self._warned[topic] = now
            log.warning(message, *args)

    # -- wire facts learned from backends, shared with the other replicas through Redis ------------------
    def _learned_no_stream_options(self, backend: str) -> None:
        log.info("backend %s refuses stream_options: streams to it are billed from the estimate", backend)
        self._pending_facts.add(backend)

    async def _sync_wire_facts(self) -> None:
        """Publish what this node learned, and learn what the others did (every heartbeat)."""
        pending, self._pending_facts = self._pending_facts, set()
        try:
            for backend in pending:
                await write_wire_fact(self.redis, backend, "no_stream_options")
            facts = await read_wire_facts(self.redis)
            # what this node learned while the read was under way is not in it yet: kept (published next time)
            learned = {b for b, f in facts.items() if "no_stream_options" in f}
            self.upstream.no_stream_options = learned | self._pending_facts
        except StateError:
            self._pending_facts |= pending  # Redis away: publish next time

    # -- budget leases for blocking hard limits (nexus.core.reservations) ------------------------------
    def budget_scopes(self, key_id: str | None) -> tuple[str, ...]:
        """The budget scopes a request of `key_id` counts under: global, the key, and the key's team."""
        if not key_id:
            return (GLOBAL_SCOPE,)
        team = self.tenants.team_of(key_id)
        return (GLOBAL_SCOPE, key_id, team_scope(team)) if team else (GLOBAL_SCOPE, key_id)

    def lease_limits(self, snap: Snapshot, estimate: float, key_id: str | None,
                     at: float) -> list[tuple[str, float, str]]:
        """(scope, limit, period) of every blocking hard limit this priced request must be admitted under,
        each scope in the period its rule gives `at`, the request's own timestamp: its record's spend counts
        in that period (nexus.core.telemetry_store), so its lease must be of the same one. (Not the period of
        the ledger's last read: just after a rollover that is still the old one, and a lease taken there would
        hide the request from the new period's limit.)"""
        if estimate <= 0:
            return []
        out = []
        for scope in self.budget_scopes(key_id):
            state = snap.budgets.get(scope)
            if state is None or state.monthly_limit_usd is None or state.hard_limit_action is HardLimitAction.WARN:
                continue
            out.append((scope, state.monthly_limit_usd, state.rule.name(at)))
        return out

    async def reserve(self, snap: Snapshot, estimate: float, key_id: str | None, at: float) -> Reservation | None:
        """What the request took from the lease (NO_RESERVATION under no blocking limit), or None when the
        budget has no room for it. Redis unreachable when the lease is short: refused (the budget holds; local
        backends still serve)."""
        limits = self.lease_limits(snap, estimate, key_id, at)
        if not limits:
            return NO_RESERVATION
        room = min(limit - snap.budgets[scope].spend_usd for scope, limit, _ in limits)
        try:
            admitted = await self.leases.take(limits, estimate, room)
        except StateError:
            return None
        if not admitted:
            return None
        periods = {scope: period for scope, _, period in limits}
        self.admitted.admit(periods, estimate)  # settled when its record is written; charged if this node dies
        return Reservation(estimate, MappingProxyType(periods))

    # -- telemetry ------------------------------------------------------------------------------------
    def record(self, rec: TelemetryRecord) -> None:
        """Buffer a request's record (built by the request: nexus/router_node/inflight.py); its cost and the
        reservation it releases count in the spend this node routes by at once."""
        self.telemetry.record(rec)
        note_record(rec)  # the request's log line, span and metrics are made from this same record
        if rec.outcome != Outcome.UPSTREAM_ERROR:  # an answer (not a failed attempt or a release record)
            self.metrics.observe_request(rec.model, rec.backend, rec.latency_ms / 1000.0, rec.prompt_tokens,
                                         rec.completion_tokens, rec.cost_usd)
        self._apply_spend()

    async def _flush_loop(self) -> None:
        """Every flush interval: write telemetry and read the cluster back, give back idle leases, then route
        by what was read (queued requests re-decide: cluster load or spend may have changed)."""
        tel = self.telemetry
        while True:
            try:
                dropped = await tel.flush()
                await self.leases.return_idle(tel.live_periods)
            except StateError as exc:
                delay = tel.flush_failed(exc)
            else:
                delay = tel.flushed()
                if dropped:
                    self.refresher.poke()  # Redis lost spend: the refresher checks the rest of the state now
            self._apply_spend()
            self.queue.notify()
            await asyncio.sleep(delay)

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.upstream.start()
        try:
            if self._seed:
                await seed_desired(self.redis, self.settings.desired())
            await self.refresher.load()
        except StateError as exc:
            log.warning("router node %s starting without a snapshot (Redis unavailable): %s", self.node_id, exc)
        with contextlib.suppress(StateError):
            await self._reclaim()
        with contextlib.suppress(StateError):
            self.tenants.secret = await load_hash_secret(self.redis, self.settings)
        self._tasks = [
            asyncio.create_task(self.rates.run(), name="rate-allowances"),
            asyncio.create_task(self.refresher.run_poll(), name="snapshot-poll"),
            asyncio.create_task(self.refresher.run_events(), name="snapshot-events"),
            asyncio.create_task(self._flush_loop(), name="telemetry-flush"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]

    def _periods(self) -> list[str]:
        """The current and the previous period of every budget scope (a lease taken just before a rollover)."""
        calendar = self._calendar()
        rules = [calendar.default, *calendar.scopes.values()]
        now = self.clock()
        return sorted({name for r in rules for name in (r.name(now), r.previous(now))})

    async def _reclaim(self) -> None:
        """Settle what an earlier process under this node id still holds (a SIGKILL or crash left it): its
        admitted, never recorded requests become unreconciled spend, its leases are dropped. Before any new
        lease is taken, so nothing of this process is touched. (Without this, a restarted node heart-beats
        under the same id before the liveness worker ever sees it gone, and its lease leaks for good.)"""
        charged = await settle_node(self.redis, self._periods(), self.node_id)
        if charged:
            log.warning("router node %s: a previous process under this id left %s admitted but unrecorded; "
                        "charged as unreconciled spend", self.node_id,
                        ", ".join(f"{s} {p} ${usd:.6f}" for (s, p), usd in sorted(charged.items())))

    async def stop(self, drain_seconds: float = 10.0) -> None:
        self.draining = True
        deadline = time.monotonic() + drain_seconds
        while self.load.total() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        pending = set(self._tasks)
        while pending:
            # Cancel until done: on Python 3.11 a cancel that lands as an `asyncio.wait_for` inside redis-py
            # (send_packed_command with socket_timeout) completes is swallowed, and the loop runs on for ever.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(StateError, TimeoutError):
            await asyncio.wait_for(self.telemetry.flush(), 2.0)
            # every record is written, so nothing is admitted and unrecorded: what is left of the leases goes back
            await asyncio.wait_for(self.leases.return_all(), 1.0)
        with contextlib.suppress(StateError, TimeoutError):
            await asyncio.wait_for(self.rates.close(), 1.0)
        with contextlib.suppress(StateError, TimeoutError):
            await asyncio.wait_for(self._beat(), 1.0)
        await self.observability.close()
        await self.upstream.close()

    async def _beat(self) -> None:
        snap = self._base
        await write_heartbeat(
            self.redis,
            NodeHeartbeat(
                node=self.node_id,
                at=self.clock(),
                started_at=self.started_at,
                snapshot_version=snap.version if snap else 0,
                snapshot_built_at=snap.built_at if snap else None,
                observed_at=snap.observed_at if snap else None,
                inflight=self.load.total(),
                queue_depth=self.queue.depth,
                telemetry_buffered=self.telemetry.buffered,
                redis_ok=self.telemetry.redis_ok,
                draining=self.draining,
                snapshot_error=self.refresher.failing_version and self.refresher.last_error,
                failing_version=self.refresher.failing_version,
                state_lost=self.refresher.lost,
            ),
        )

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(StateError):
                await self._beat()
            with contextlib.suppress(StateError):
                # the first read, or (Redis lost it) putting back the one keys were hashed under
                self.tenants.secret = await load_hash_secret(self.redis, self.settings, self.tenants.secret)
            await self._sync_wire_facts()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def render_metrics(self) -> bytes:
        """`GET /metrics`: the gauges that mirror this node's state are set now, not on the hot path."""
        self._set_gauges(self.metrics)
        self.metrics.fleet(self.snapshot, self.load.local, self.telemetry.redis_ok)
        return self.metrics.render()

    def _set_gauges(self, m: Metrics) -> None:
        m.queue_depth.set(self.queue.depth)
        m.state_lost.set(1 if self.refresher.lost else 0)
        m.state_restores.set(self.refresher.restores)
        m.telemetry_buffered.set(self.telemetry.buffered)
        m.inflight.clear()
        for name, n in self.load.local.items():
            m.inflight.labels(name).set(n)
        snap = self._effective
        if snap is None:
            return
        opened = self.breakers.view().open
        for name in snap.backends:
            m.circuit_open.labels(name).set(1 if name in opened else 0)
        now = time.time()
        m.snapshot_age.set(now - snap.built_at)
        m.snapshot_version.set(snap.version)
        m.observed_age.set(now - snap.observed_at if snap.observed_at is not None else float("nan"))
        for scope, state in snap.budgets.items():
            m.budget_spend.labels(scope).set(state.spend_usd)
            m.budget_utilization.labels(scope).set(state.utilization())
            m.budget_status.labels(scope).set(state.status().severity)
