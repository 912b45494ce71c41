"""One router node's spend ledger: what it knows of each budget scope's spend, as a pure value.

Amounts per budget scope (`global`, or an API key id), all in USD of the scope's current period:

- live: the cluster's recorded spend as last read from Redis (the telemetry loop never lowers it within a
  period: a read that finds less means Redis lost spend, see `nexus.router_node.telemetry`);
- pending: what this node recorded since and the last read does not include yet (buffered, or written
  after the read);
- reserved: every node's outstanding budget leases as last read, plus this node's grants and returns since,
  less the reservations its records released since (`nexus.core.reservations`);
- leased: the part of this node's own leases it has not given to a request yet, per lease key (the scopes a
  lease covers, each in its period).

`spend(scope)` = live + pending + reserved is the scope's committed spend as this node knows it;
`committed(scope)` = spend - leased is what the node routes by, since its unused lease is still its own to
spend. Admission (`take`) hands out only lease this node holds, and a lease is granted by Redis only while
spend + every lease stays within the limit, so committed spend never passes a hard limit through admission
(only by what requests cost beyond their estimate). `lease_request` sizes a renewal: at most `LEASE_SHARE` of
the limit and `ROOM_SHARE` of the room left, never less than the request needs.

Every method returns a new `Ledger`; nothing here does I/O or reads a clock, so the guarantee has unit tests
(tests/core/test_ledger.py). The process holds the current value in a `LedgerCell` that the telemetry loop
and the lease book both update, in place of callbacks between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

__all__ = [
    "EPSILON",
    "LEASE_SHARE",
    "NO_RESERVATION",
    "ROOM_SHARE",
    "LeaseKey",
    "LeaseRequest",
    "Ledger",
    "LedgerCell",
    "Reservation",
]

LEASE_SHARE = 0.02  # a lease is at most this share of the limit...
ROOM_SHARE = 0.25  # ...and of the room left, so leases shrink as the budget runs out
EPSILON = 1e-12  # amounts closer than this to zero are zero (float sums of many small costs)

LeaseKey = tuple[tuple[str, str], ...]  # ((scope, period), ...): each scope leases in its own period

_EMPTY: Mapping = MappingProxyType({})


def _empty() -> Mapping:
    return _EMPTY


def _frozen(values: Mapping) -> Mapping:
    return MappingProxyType(dict(values))


def _add(amounts: Mapping[str, float], scopes: Iterable[str], delta: float, *, floor: bool) -> Mapping[str, float]:
    """`amounts` with `delta` added under every scope; clamped at 0 when `floor`, else dropped near 0."""
    out = dict(amounts)
    for scope in scopes:
        value = out.get(scope, 0.0) + delta
        if floor:
            out[scope] = max(0.0, value)
        elif abs(value) < EPSILON:
            out.pop(scope, None)
        else:
            out[scope] = value
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one admitted request took from leases: `amount` USD under every scope of `periods` (scope -> the
    period it was leased in). Its telemetry record carries it back, exactly once."""

    amount: float = 0.0
    periods: Mapping[str, str] = field(default_factory=_empty)

    def __bool__(self) -> bool:
        return self.amount > 0


NO_RESERVATION = Reservation()


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """Ask Redis for `want` under `key`; refused unless at least `need` can be granted."""

    key: LeaseKey
    want: float
    need: float


@dataclass(frozen=True, slots=True)
class Ledger:
    periods: Mapping[str, str] = field(default_factory=_empty)  # scope -> its current period, as of the last read
    live: Mapping[str, float] = field(default_factory=_empty)
    pending: Mapping[str, float] = field(default_factory=_empty)
    reserved: Mapping[str, float] = field(default_factory=_empty)
    leases: Mapping[LeaseKey, float] = field(default_factory=_empty)

    # -- views ----------------------------------------------------------------------------------------
    def spend(self, scope: str) -> float:
        """Committed spend of `scope` cluster-wide as this node knows it, leases included."""
        return self.live.get(scope, 0.0) + self.pending.get(scope, 0.0) + self.reserved.get(scope, 0.0)

    def leased(self, scope: str) -> float:
        """Lease this node holds for `scope` and has not given to a request yet."""
        return sum(v for key, v in self.leases.items() if any(s == scope for s, _ in key))

    def committed(self, scope: str) -> float:
        """What the node routes by: the committed spend less its own unused lease (still its to spend)."""
        return self.spend(scope) - self.leased(scope)

    def available(self, key: LeaseKey) -> float:
        return self.leases.get(key, 0.0)

    # -- telemetry ------------------------------------------------------------------------------------
    def recorded(self, scopes: Iterable[str], cost: float, released: float = 0.0,
                 released_scopes: Iterable[str] = ()) -> Ledger:
        """A record of `cost` under `scopes` was buffered; it releases `released` of the node's reservations
        under `released_scopes` (its cost is pending now, so the reservation no longer counts)."""
        out = self
        if cost > 0:
            out = replace(out, pending=_add(out.pending, scopes, cost, floor=False))
        if released > 0:
            out = replace(out, reserved=_add(out.reserved, released_scopes, -released, floor=True))
        return out

    def unrecorded(self, scopes: Iterable[str], cost: float) -> Ledger:
        """A record's cost stops being pending: a read includes it now, or the buffer dropped it."""
        if cost <= 0:
            return self
        return replace(self, pending=_add(self.pending, scopes, -cost, floor=False))

    def read(self, periods: Mapping[str, str], live: Mapping[str, float], reserved: Mapping[str, float]) -> Ledger:
        """Redis was read: each scope's period, its live spend and every node's leases in that period."""
        return replace(self, periods=_frozen(periods), live=_frozen(live), reserved=_frozen(reserved))

    # -- leases ---------------------------------------------------------------------------------------
    def lease_request(self, limits: Iterable[tuple[str, float, str]], estimate: float, room: float) -> LeaseRequest:
        """The renewal to ask for when the lease under `limits` ((scope, limit, period), ...) is short of
        `estimate`; `room` is this node's view of what the budget has left (sizes it, never decides)."""
        limits = tuple(limits)
        key = tuple((scope, period) for scope, _, period in limits)
        smallest_limit = min(limit for _, limit, _ in limits)
        want = max(estimate, min(smallest_limit * LEASE_SHARE, max(room, 0.0) * ROOM_SHARE))
        return LeaseRequest(key, want, estimate - self.available(key))

    def granted(self, key: LeaseKey, amount: float) -> Ledger:
        """Redis granted `amount` more lease under `key`: held unused, and counted as reserved."""
        return replace(self.restored(key, amount),
                       reserved=_add(self.reserved, (scope for scope, _ in key), amount, floor=True))

    def take(self, key: LeaseKey, estimate: float) -> Ledger | None:
        """Admit a request of `estimate` against the unused lease under `key`; None when it is short."""
        have = self.available(key)
        if have + EPSILON < estimate:
            return None
        return self._with_lease(key, have - estimate)

    def withdrawn(self, key: LeaseKey) -> tuple[Ledger, float]:
        """Take the whole unused lease under `key` out to give it back: (the ledger after, the amount). It
        stays reserved until Redis confirms (`given_back`); `restored` undoes this when Redis could not."""
        if key not in self.leases:
            return self, 0.0
        leases = dict(self.leases)
        amount = leases.pop(key)
        return replace(self, leases=MappingProxyType(leases)), amount

    def given_back(self, key: LeaseKey, amount: float) -> Ledger:
        """Redis took back `amount` of this node's lease under `key`."""
        return replace(self, reserved=_add(self.reserved, (scope for scope, _ in key), -amount, floor=True))

    def restored(self, key: LeaseKey, amount: float) -> Ledger:
        return self._with_lease(key, self.available(key) + amount)

    def _with_lease(self, key: LeaseKey, amount: float) -> Ledger:
        leases = dict(self.leases)
        leases[key] = amount
        return replace(self, leases=MappingProxyType(leases))


class LedgerCell:
    """The process's current ledger: one mutable reference the telemetry loop and the lease book share."""

    __slots__ = ("ledger",)

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.ledger = ledger or Ledger()
