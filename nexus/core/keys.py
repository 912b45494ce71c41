"""The Redis key schema: every key string, TTL and channel name Nexus uses, and nothing else.

No other module builds a key string; they import the constants and functions here (as arq keeps its
names in one `constants.py`). Changing the layout of a value means bumping `VERSION`, so an old and a
new release never read each other's data by accident.

Invariants:
- Every key starts with `PREFIX` (`nexus:v1`).
- Keys of one logical unit share a hash tag (`{config}`, `{observed}`, `{telemetry}`, `{load}`,
  `{nodes}`, `{worker}`), so a transaction or Lua script touching one unit stays in one Redis Cluster slot.
  Code must never combine keys of two units in one MULTI or script.
- Pub/sub channels are not keys (they have no slot); they carry the prefix all the same.

Layout (values are orjson-encoded JSON unless said otherwise):

    {config}     backends  hash  backend name -> BackendConfig
                 routing   str   RoutingConfig (policies, aliases, fallbacks, weights, budgets)
                 version   int   bumped by every desired-state write; its existence means "seeded"
                 epoch     str   random id written with the first seed: a Redis that lost its data has
                                 none (or, once restored, another), which is how nodes tell loss from change
                 keys      hash  key id -> KeyConfig (nexus.core.tenancy: digests only, never a secret)
                 teams     hash  team name -> TeamConfig
                 key_hash_secret str  the generated HMAC secret client keys are hashed under, when
                                 `[server] key_hash_secret_env` names none (docs/tenancy.md)
    {observed}   health    hash  backend name -> health record (state, checked_at, models, counters)
                 quality   hash  backend name -> QualityStats
                 spend     hash  budget scope -> {spend_usd, period} plus, from the budget worker,
                                 {status, limit_usd, soft_limit_fraction, utilization, checked_at}
                 wire      hash  backend name -> {fact: learned at (unix s)}, facts router nodes learned
                                 about a backend's wire format (`no_stream_options`); stale after
                                 WIRE_FACT_TTL_SECONDS, then learned again
    {telemetry}  writer:<writer> string  the writer's last applied batch number (replay guard)
                 spend:<period> hash  budget scope -> float (HINCRBYFLOAT, live spend of the period)
                 reserved:<period> hash "<node>|<scope>" -> float USD reserved by in-flight requests near a
                                 hard limit (released when their telemetry batch is written)
                 admitted:<period> hash "<node>|<scope>" -> float USD admitted against leases and not yet
                                 recorded, as each node last reported (charged when the node dies)
                 unreconciled:<period> hash scope -> float USD charged for dead nodes' admitted requests
                 restored:<period> hash scope -> float USD put back after a data loss; `_at`: when
                 agg:<period>   hash  aggregate field -> int (batches' sums; see nexus.core.aggregates)
                 quarantine     hash  record id -> {reason, record, at}: records a batch could not count
                 quality:<backend>:<YYYYMMDDHH>  hash  "<MM>.<metric>" -> int (per-minute quality counts)
    {load}       inflight:<node>  hash  backend name -> int, expires after INFLIGHT_TTL_SECONDS
                 nodes            zset  node id -> last gauge write (unix s); index of the gauges
    {nodes}      heartbeats  hash  node id -> heartbeat JSON; stale after NODE_STALE_SECONDS, then
                                   marked `gone` by the liveness worker
                 decisions:<node> list  recent sampled routing decisions of one node, newest first (LPUSH +
                                   LTRIM to [telemetry] decisions_kept); expires after DECISIONS_TTL_SECONDS
    {rate}       rpm:<scope>  zset  rate-limit allowances granted to router nodes (nexus.core.rates): member
                 tpm:<scope>  zset  "<count>:<node>:<seq>", score = the unix ms its allowance stops counting
    {fleet}      discovered  hash  backend name -> {url, service, instance, first_seen, last_seen}: what the
                                   discovery job last saw of each backend it wrote (`source = discovered`)
                 ignored     hash  backend URL -> {name, at}: announcements an operator ignored
                 models      hash  backend name -> {at, models: [{name, size_vram, expires_at}]}, Ollama's
                                   /api/ps as the lifecycle job last read it
                 ops         hash  operation id -> lifecycle operation (load, unload, migrate) and its state
                 lock:<name> str   a lease held by the one worker running job `name` (discovery, an op)
                 recommendations str pre-warm recommendations of the fleet job, with reasons
    {observed}   lifecycle   hash  backend name -> {model: {state, op, until}}: models a lifecycle operation
                                   is loading (`loading`) or about to unload (`draining`) there; ignored
                                   after `until`, so a worker that dies mid-operation leaves no lasting mark
    {admin}      session:<sha256> str  a dashboard session: {csrf, expires_at}; expires after
                                   DASHBOARD_SESSION_TTL_SECONDS (the cookie holds the id, Redis its digest)
    {worker}     queue              zset  arq's job queue (arq's own `arq:job:*`, `arq:result:*`,
                                          `arq:in-progress:*` keys sit outside this schema)
                 ticks:<job>:<day>  hash  scheduled tick (unix ms) -> times the job body ran
    channel      nexus:v1:events  {"version": n, "kind": "...", "at": unix seconds}
"""

from __future__ import annotations

__all__ = [
    "CONFIG_BACKENDS",
    "CONFIG_EPOCH",
    "CONFIG_KEYS",
    "CONFIG_KEY_HASH_SECRET",
    "CONFIG_ROUTING",
    "CONFIG_TEAMS",
    "CONFIG_VERSION",
    "DASHBOARD_SESSION_TTL_SECONDS",
    "DECISIONS_TTL_SECONDS",
    "EVENTS_CHANNEL",
    "FLEET_DISCOVERED",
    "FLEET_IGNORED",
    "FLEET_MODELS",
    "FLEET_OPS",
    "FLEET_RECOMMENDATIONS",
    "INFLIGHT_NODES",
    "INFLIGHT_REGISTRY_PRUNE_SECONDS",
    "INFLIGHT_TTL_SECONDS",
    "NODES_HEARTBEATS",
    "NODE_GONE_RETENTION_SECONDS",
    "NODE_STALE_SECONDS",
    "OBSERVED_HEALTH",
    "OBSERVED_LIFECYCLE",
    "OBSERVED_QUALITY",
    "OBSERVED_SPEND",
    "OBSERVED_WIRE",
    "PREFIX",
    "RATE_WINDOW_SECONDS",
    "TELEMETRY_AGG_TTL_SECONDS",
    "TELEMETRY_QUALITY_TTL_SECONDS",
    "TELEMETRY_QUARANTINE",
    "TELEMETRY_SPEND_TTL_SECONDS",
    "TELEMETRY_WRITER_TTL_SECONDS",
    "VERSION",
    "WIRE_FACT_TTL_SECONDS",
    "WORKER_QUEUE",
    "WORKER_TICKS_TTL_SECONDS",
    "dashboard_session",
    "decisions",
    "fleet_lock",
    "inflight",
    "rate_window",
    "telemetry_admitted",
    "telemetry_agg",
    "telemetry_quality",
    "telemetry_reserved",
    "telemetry_restored",
    "telemetry_spend",
    "telemetry_unreconciled",
    "telemetry_writer",
    "worker_ticks",
]

VERSION = "v1"
PREFIX = f"nexus:{VERSION}"


def _key(unit: str, name: str) -> str:
    return f"{PREFIX}:{{{unit}}}:{name}"


def _part(kind: str, value: str) -> str:
    # An empty or whitespace-bearing suffix would silently alias another key or break redis-cli use.
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{kind} must be a non-empty string without whitespace, got {value!r}")
    return value


# -- desired state (written by the admin API and by seeding) -----------------------------------------
CONFIG_BACKENDS = _key("config", "backends")
CONFIG_ROUTING = _key("config", "routing")
CONFIG_VERSION = _key("config", "version")
CONFIG_EPOCH = _key("config", "epoch")
CONFIG_KEYS = _key("config", "keys")
CONFIG_TEAMS = _key("config", "teams")
CONFIG_KEY_HASH_SECRET = _key("config", "key_hash_secret")

EVENTS_CHANNEL = f"{PREFIX}:events"

# -- observed state (written by workers) ---------------------------------------------------------------
OBSERVED_HEALTH = _key("observed", "health")
OBSERVED_QUALITY = _key("observed", "quality")
OBSERVED_SPEND = _key("observed", "spend")
OBSERVED_WIRE = _key("observed", "wire")
OBSERVED_LIFECYCLE = _key("observed", "lifecycle")
# a learned wire fact is trusted this long: a backend upgraded meanwhile gets the field offered again
WIRE_FACT_TTL_SECONDS = 24 * 3600

# -- telemetry (written by router nodes, one batch per flush: nexus.core.telemetry_store) ------------------
# Live spend outlives its budget period by a margin so the budget worker can still close the period.
TELEMETRY_SPEND_TTL_SECONDS = 40 * 24 * 3600
# A writer's last applied batch number outlives its last batch by this much: a node replaying a batch whose
# reply it lost (after a Redis outage, say) within that time cannot apply it twice.
TELEMETRY_WRITER_TTL_SECONDS = 40 * 24 * 3600  # as long as the spend it guards: one small key per process start


def telemetry_writer(writer: str) -> str:
    """String: the number of the last batch of telemetry writer `writer` (a node's buffer) that was applied."""
    return _key("telemetry", f"writer:{_part('writer', writer)}")


def telemetry_reserved(period: str) -> str:
    """Hash of "<node id>|<budget scope>" -> USD reserved (not yet spent) in `period`."""
    return _key("telemetry", f"reserved:{_part('period', period)}")


def telemetry_admitted(period: str) -> str:
    """Hash of "<node id>|<budget scope>" -> USD its requests took from leases and it has not recorded yet,
    as the node last reported it (every telemetry flush): what a crash of that node leaves uncounted."""
    return _key("telemetry", f"admitted:{_part('period', period)}")


def telemetry_restored(period: str) -> str:
    """Hash of budget scope -> USD put back into `period`'s live spend after a Redis data loss (`_at`: when);
    its existence marks the period's figures as incomplete."""
    return _key("telemetry", f"restored:{_part('period', period)}")


def telemetry_unreconciled(period: str) -> str:
    """Hash of budget scope -> USD charged for requests of dead nodes that were admitted but never recorded."""
    return _key("telemetry", f"unreconciled:{_part('period', period)}")


def telemetry_spend(period: str) -> str:
    """Hash of budget scope -> spend (USD float) accumulated in `period` (e.g. `2025-06`)."""
    return _key("telemetry", f"spend:{_part('period', period)}")


# -- cluster-wide load (one gauge per router node) -------------------------------------------------------
# A node rewrites its gauge when it changes and at least every second; the TTL only matters when a node
# dies (its load must stop counting soon: a dead node's gauge can make a backend look full cluster-wide),
# and must be long enough that a node paused by GC or a slow Redis does not flicker out of the sum.
INFLIGHT_TTL_SECONDS = 5.0
# Registry entries not refreshed for this long are pruned by writers; the gauge TTL, not this, decides
# what is counted, so the prune horizon only bounds the registry's size.
INFLIGHT_REGISTRY_PRUNE_SECONDS = 10 * INFLIGHT_TTL_SECONDS
INFLIGHT_NODES = _key("load", "nodes")


def inflight(node_id: str) -> str:
    """Gauge hash of backend name -> requests in flight on router node `node_id`."""
    return _key("load", f"inflight:{_part('node id', node_id)}")


# -- router node heartbeats -----------------------------------------------------------------------------
NODES_HEARTBEATS = _key("nodes", "heartbeats")
# Heartbeats live in one hash (fields cannot expire in Redis 6), so readers judge staleness by the
# timestamp inside the value against this horizon. Nodes beat every second.
NODE_STALE_SECONDS = 10.0
# Gone nodes (marked by the liveness worker) stay listed this long after their last heartbeat, so an
# operator can still see them in `GET /admin/v1/nodes`; then the worker removes them.
NODE_GONE_RETENTION_SECONDS = 24 * 3600.0
# a node's ring of recent decisions outlives the node by this much, then goes with it
DECISIONS_TTL_SECONDS = 3600


def decisions(node_id: str) -> str:
    """List of router node `node_id`'s recent sampled decisions (JSON), newest first."""
    return _key("nodes", f"decisions:{_part('node id', node_id)}")


# -- dashboard sessions (admin API) ------------------------------------------------------------------------
DASHBOARD_SESSION_TTL_SECONDS = 8 * 3600


def dashboard_session(digest: str) -> str:
    """A dashboard session, by the sha256 hex digest of its cookie value (the id itself is never stored)."""
    return _key("admin", f"session:{_part('session digest', digest)}")


# -- telemetry aggregates (written with each batch) -------------------------------------------------------------
# Records a batch could not count (counters out of bounds): id -> {reason, record, at}. Kept as long as
# aggregates, for the admin API.
TELEMETRY_QUARANTINE = _key("telemetry", "quarantine")
# Period aggregates back the admin spend report, which keeps old periods: a year and a month.
TELEMETRY_AGG_TTL_SECONDS = 400 * 24 * 3600
# Quality hours are read for 24 h windows; the extra 2 h cover the current hour and clock skew.
TELEMETRY_QUALITY_TTL_SECONDS = 26 * 3600


def telemetry_agg(period: str) -> str:
    """Hash of aggregate field -> integer (nano-USD, tokens, counts) for budget period `period`."""
    return _key("telemetry", f"agg:{_part('period', period)}")


def telemetry_quality(backend: str, hour: str) -> str:
    """Hash of `<MM>.<metric>` -> integer for backend `backend` in UTC hour `hour` (`YYYYMMDDHH`)."""
    return _key("telemetry", f"quality:{_part('backend', backend)}:{_part('hour', hour)}")


# -- rate limits (router nodes' allowances, nexus.core.rates) -----------------------------------------------
# RPM and TPM count over sliding windows of this length; a window's zset expires this long after its newest grant.
RATE_WINDOW_SECONDS = 60


def rate_window(kind: str, scope: str) -> str:
    """Zset of the allowances granted under `scope` (a key id or `team:<name>`) for `kind` (`rpm` or `tpm`)."""
    if kind not in ("rpm", "tpm"):
        raise ValueError(f"rate kind must be rpm or tpm, got {kind!r}")
    return _key("rate", f"{kind}:{_part('scope', scope)}")


# -- fleet: discovery and model lifecycle (written by workers and the admin API) ---------------------------
FLEET_DISCOVERED = _key("fleet", "discovered")
FLEET_IGNORED = _key("fleet", "ignored")
FLEET_MODELS = _key("fleet", "models")
FLEET_OPS = _key("fleet", "ops")
FLEET_RECOMMENDATIONS = _key("fleet", "recommendations")


def fleet_lock(name: str) -> str:
    """A lease (SET NX PX) naming the worker that runs `name` now: the discovery browse, one lifecycle op."""
    return _key("fleet", f"lock:{_part('lock name', name)}")


# -- workers (arq) -----------------------------------------------------------------------------------------
# arq's queue; every worker process and `nexus serve` must share it for cron uniqueness to hold.
WORKER_QUEUE = _key("worker", "queue")
# Tick counters only serve to audit "each tick ran once"; three days cover any investigation window.
WORKER_TICKS_TTL_SECONDS = 3 * 24 * 3600


def worker_ticks(job: str, day: str) -> str:
    """Hash of scheduled tick (unix ms) -> how many times cron job `job` ran for it, per UTC day."""
    return _key("worker", f"ticks:{_part('job', job)}:{_part('day', day)}")
