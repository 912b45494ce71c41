"""The router node's telemetry buffer and its flush loop.

Requests append records to an in-process buffer (no I/O on the request path). Every
`telemetry.flush_interval_ms` one loop iteration: sums the buffered records into batches of up to
`MAX_BATCH` and writes each with one idempotent script call (`nexus.core.telemetry_store.write_batch`:
aggregates, quality minutes, live spend, lease releases), publishes this node's in-flight gauge, reads back
the cluster-wide in-flight sum and every budget scope's live spend and leases in the scope's own current
period (`nexus.core.periods`). A batch, once formed, is sent again unchanged (same writer, same number) until
Redis confirmed it, and the next is formed only then: so Redis keeps one number per writer and a replay is
never counted twice. While Redis is away the buffer keeps growing up to `telemetry.buffer_max_records`
(oldest dropped beyond that, counted) and is written when Redis returns. With `redis.replica_acks` set
(Sentinel deployments), a batch is confirmed only after Redis WAIT saw it on that many replicas (or the wait
timed out: counted), so a primary failover does not lose flushed records.

The spend this node routes by is the live spend read back plus what it has recorded but not yet flushed,
so a replica cut off from Redis still counts its own spending against the budget. Those amounts live in the
node's spend ledger (`nexus.core.ledger`, shared with the lease book through a `LedgerCell`): this module
buffers, writes and reads, and moves the ledger on at each step. The loop that calls `flush` is the node's
(`nexus.router_node.node`), which then returns idle leases and re-applies the spend to its snapshot.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable

from redis.asyncio import Redis

from nexus.core.config import GLOBAL_SCOPE
from nexus.core.errors import StateError
from nexus.core.ledger import Ledger, LedgerCell
from nexus.core.observed import read_inflight, write_inflight
from nexus.core.periods import BudgetCalendar
from nexus.core.recovery import restore_spend
from nexus.core.reservations import read_reserved, report_admitted
from nexus.core.telemetry_store import (
    TelemetryBatch,
    TelemetryRecord,
    Written,
    read_live_spend,
    record_scopes,
    write_batch,
    write_batch_replicated,
)
from nexus.router_node.leases import AdmittedBook
from nexus.router_node.load import LoadTracker

__all__ = ["Telemetry"]

log = logging.getLogger("nexus.telemetry")
MAX_BATCH = 500
GAUGE_REFRESH_SECONDS = 1.0


class Telemetry:
    def __init__(
        self,
        redis: Redis,
        node_id: str,
        load: LoadTracker,
        *,
        interval_ms: int,
        max_records: int,
        calendar: Callable[[], BudgetCalendar],
        clock: Callable[[], float] = time.time,
        on_dropped: Callable[[int], None] | None = None,
        cell: LedgerCell | None = None,
        replica_acks: int = 0,
        ack_timeout_ms: int = 100,
        on_unreplicated: Callable[[int], None] | None = None,
        on_quarantined: Callable[[int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._node_id = node_id
        self._load = load
        self._interval = interval_ms / 1000.0
        self._max = max_records
        self._calendar = calendar
        self._clock = clock
        self._on_dropped = on_dropped
        self.cell = cell or LedgerCell()
        self._acks = (replica_acks, ack_timeout_ms)
        self._on_unreplicated = on_unreplicated
        self._on_quarantined = on_quarantined
        # this buffer's name in Redis: new with every start, so batch numbers never need to survive a restart
        self.writer = f"{node_id}:{secrets.token_hex(6)}"
        self._seq = 0
        self._pending: TelemetryBatch | None = None  # formed, not confirmed yet: sent again as it is
        self._short_since: float | None = None
        # the highest live spend read per (scope, period): live spend only grows within a period, so this is what
        # the node still knows when Redis loses it (restored from here, and budgets route by it meanwhile)
        self.peaks: dict[tuple[str, str], float] = {}
        # the peaks as they were when a read found less (Redis lost the spend): put back by the next flush
        self.floors: dict[tuple[str, str], float] = {}
        self.admitted = AdmittedBook()  # requests' lease amounts not recorded in Redis yet (see router_node.leases)
        self._buffer: deque[TelemetryRecord] = deque()
        self._unseen: list[TelemetryRecord] = []
        self._backoff = self._interval
        self.redis_ok = True
        self.dropped = 0
        self._gauge_sent: dict[str, int] | None = None
        self._gauge_at = 0.0

    @property
    def buffered(self) -> int:
        return len(self._buffer) + (len(self._pending.records) if self._pending is not None else 0)

    @property
    def ledger(self) -> Ledger:
        return self.cell.ledger

    @property
    def live_periods(self) -> dict[str, str]:
        """Budget scope -> the period the ledger's amounts are of (each scope's own, as of the last read)."""
        return dict(self.cell.ledger.periods)

    def record(self, rec: TelemetryRecord) -> None:
        ledger = self.cell.ledger
        if len(self._buffer) >= self._max:
            old = self._buffer.popleft()
            ledger = ledger.unrecorded(record_scopes(old), old.cost_usd)
            self.dropped += 1
            if self._on_dropped:
                self._on_dropped(1)
        self._buffer.append(rec)
        # the record's own cost is pending now; its reservation is released when the record is written
        self.cell.ledger = ledger.recorded(record_scopes(rec), rec.cost_usd, rec.reserved_usd, rec.reserved_periods)

    def spend(self, scope: str) -> float:
        """This period's spend of `scope` as far as this node knows, reservations included: what the
        cluster spent (as last read), what this node spent since, and what in-flight requests reserved."""
        return self.cell.ledger.spend(scope)

    async def flush(self) -> bool:
        """One iteration; raises StateError when Redis is unavailable (records stay buffered). True when the
        read found less spend than before in a period (Redis lost it: the refresher should check the rest)."""
        # only what is buffered now: records keep arriving while a batch is written (and, with replica_acks,
        # waited for), and chasing them could keep one flush going for as long as traffic lasts
        todo = len(self._buffer)
        while self._pending is not None or (todo > 0 and self._buffer):
            if self._pending is None:
                n = min(MAX_BATCH, todo, len(self._buffer))
                self._seq += 1
                records = tuple(self._buffer.popleft() for _ in range(n))
                self._pending = TelemetryBatch(self.writer, self._seq, records, self._clock())
                todo -= n
            batch = self._pending
            await self._write(batch)
            self._pending = None
            for rec in batch.records:
                # still pending until the live spend read below includes it
                self._unseen.append(rec)
                if rec.reserved_usd > 0:
                    self.admitted.settle(rec.reserved_periods, rec.reserved_usd)
        changed = self.admitted.changes()
        if changed:
            await report_admitted(self._redis, self._node_id, changed)
            self.admitted.reported = dict(self.admitted.amounts)
        now = time.monotonic()
        local = dict(self._load.local)
        if local != self._gauge_sent or now - self._gauge_at >= GAUGE_REFRESH_SECONDS:
            await write_inflight(self._redis, self._node_id, self._load.snapshot_local())
            self._gauge_sent, self._gauge_at = local, now
        self._load.update_cluster(await read_inflight(self._redis))
        dropped = await self._read_spend()
        if self.floors:
            floors = self.floors
            raised = await restore_spend(self._redis, floors)
            self.floors = {}
            if raised:
                log.warning("restored the live spend Redis lost: %s",
                            ", ".join(f"{s} {p}: ${floors[(s, p)]:.6f} put back" for s, p in raised))
                await self._read_spend()
        ledger = self.cell.ledger
        for rec in self._unseen:
            ledger = ledger.unrecorded(record_scopes(rec), rec.cost_usd)
        self.cell.ledger = ledger
        self._unseen.clear()
        return dropped

    def periods(self) -> dict[str, str]:
        """Every budget scope's current period by this node's clock."""
        calendar = self._calendar()
        return calendar.periods([GLOBAL_SCOPE, *calendar.scopes], self._clock())

    async def _read_spend(self) -> bool:
        """Each budget scope's live spend and leases, from the hashes of the scope's own current period; True
        when a scope's spend fell within its period."""
        periods = self.periods()
        spend: dict[str, dict[str, float]] = {}
        leased: dict[str, dict[str, float]] = {}
        for period in sorted(set(periods.values())):
            spend[period] = await read_live_spend(self._redis, period)
            leased[period] = await read_reserved(self._redis, period)
        live = {s: spend[p][s] for s, p in periods.items() if s in spend[p]}
        dropped = False
        peaks = {}
        for scope, period in periods.items():
            held = self.peaks.get((scope, period), 0.0)
            now = live.get(scope, 0.0)
            if now + 1e-6 < held:
                # live spend never falls within a period: Redis lost it. What this node read before is the
                # floor to put back (nexus.core.recovery.restore_spend adds it once, on top of what came since)
                dropped = True
                self.floors[(scope, period)] = max(held, self.floors.get((scope, period), 0.0))
            peaks[(scope, period)] = max(held, now)
        self.peaks = peaks  # past periods drop out
        reserved = {s: leased[p][s] for s, p in periods.items() if s in leased[p]}
        # a scope's live spend is never below the highest read of its period (what the node still knows)
        known = {s: peaks[(s, p)] for s, p in periods.items()}
        self.cell.ledger = self.cell.ledger.read(periods, known, reserved)
        return dropped

    async def _write(self, batch: TelemetryBatch) -> None:
        wanted, timeout_ms = self._acks
        if not wanted:
            self._quarantined(await write_batch(self._redis, batch, self._calendar()))
            return
        written, acked = await write_batch_replicated(self._redis, batch, self._calendar(), wanted, timeout_ms)
        self._quarantined(written)
        if acked >= wanted:
            self._short_since = None
            return
        # the primary holds them, a replica does not yet: kept anyway (a replica may be down for long), but
        # counted, since a failover right now would lose them
        if self._on_unreplicated is not None:
            self._on_unreplicated(len(batch.records))
        now = time.monotonic()
        if self._short_since is None or now - self._short_since >= 60.0:
            self._short_since = now
            log.warning("telemetry reached %d of %d replicas within %d ms (counted in nexus_telemetry_unreplicated);"
                        " a failover now could lose what was flushed meanwhile", acked, wanted, timeout_ms)

    def _quarantined(self, written: Written) -> None:
        bad = written.quarantined
        if not bad:
            return
        if self._on_quarantined is not None:
            self._on_quarantined(len(bad))
        log.warning("quarantined %d telemetry records that cannot be counted (GET /admin/v1/telemetry/quarantine):"
                    " %s", len(bad), "; ".join(f"{rid}: {why}" for rid, why in bad[:3]))

    def flushed(self) -> float:
        """The flush loop's last iteration succeeded: the seconds to wait before the next."""
        if not self.redis_ok:
            log.warning("redis is back; telemetry buffer replayed")
        self.redis_ok = True
        self._backoff = self._interval
        return self._interval

    def flush_failed(self, exc: StateError) -> float:
        """It failed (Redis away): records stay buffered; the seconds to wait, backing off up to 1 s."""
        if self.redis_ok:
            log.warning("telemetry flush failed, buffering %d records: %s", self.buffered, exc)
        self.redis_ok = False
        self._backoff = min(1.0, self._backoff * 2)
        return self._backoff
