"""A router node's per-request telemetry record: what one request (or one failed attempt of it) cost and how
it ended, and the budget scopes its cost counts under. Records live in the node's buffer until a flush sums
them into a batch (`nexus.core.batching`); they are not stored in Redis one by one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nexus.core.config import GLOBAL_SCOPE
from nexus.core.tenancy import team_scope

__all__ = ["Outcome", "TelemetryRecord", "record_scopes"]


class Outcome:
    """A record's `outcome`: how the request (or one failed attempt of it) ended."""

    OK = "ok"  # answered 200 (a stream: to its end)
    UPSTREAM_ERROR = "upstream_error"  # an attempt failed before the first byte (the `<id>:<n>` records)
    MIDSTREAM_ERROR = "midstream_error"  # a stream the upstream broke off after it started
    CLIENT_DISCONNECTED = "client_disconnected"  # the client left before the answer was complete

    @staticmethod
    def http(status: int) -> str:
        """A backend's non-200 answer, relayed to the client as it was."""
        return f"http_{status}"


class TelemetryRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    ts: float
    node: str
    backend: str
    backend_type: str = ""
    model: str
    requested_model: str = ""
    key: str | None = None
    team: str | None = None  # the key's team (nexus.core.tenancy): its spend counts under `team:<name>` too
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    outcome: str = Outcome.OK
    status: int = 200
    stream: bool = False
    fallback_model: str | None = None
    retries: int = 0
    # USD this request took from budget leases near a hard limit (0: none), and per scope the period whose
    # leases it took from (a scope's period is its own: see nexus.core.periods)
    reserved_usd: float = 0.0
    reserved_periods: dict[str, str] = Field(default_factory=dict)
    # a stream the upstream cut off before reporting usage: billed for the prompt plus the tokens delivered
    partial: bool = False



def record_scopes(rec: TelemetryRecord) -> tuple[str, ...]:
    """The budget scopes a record's cost counts under: `global`, its API key id when it has one, and its
    key's team (`team:<name>`) when that has one."""
    if not rec.key:
        return (GLOBAL_SCOPE,)
    return (GLOBAL_SCOPE, rec.key, team_scope(rec.team)) if rec.team else (GLOBAL_SCOPE, rec.key)
