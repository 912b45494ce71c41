"""One router node's rate-limit allowances: the pure bookkeeping behind `nexus.core.rates` (no I/O, clock given).

A request of a limited tenant needs, under each of its limited scopes (key id, `team:<name>`), one request
(`rpm`) and its estimated tokens (`tpm`). `AllowanceBook.take` admits it from the node's allowances when every
one has enough left and is still usable; else it says which asks to send to Redis (sized to need: about what the
node admitted under the scope in the last allowance lifetime, at least what this request needs, at most a quarter
of the limit), or that the scope is denied until a known time (a refusal's `wait`, at most one allowance lifetime:
another node's returned allowance may free room sooner). Everything a request takes comes from one grant per
(kind, scope), and its `Ticket` remembers which (the grant's end), so settling a TPM estimate against the real
usage corrects exactly that grant.

Invariants:
- An allowance is used only while `now < usable_until` (local monotonic, from when its request was sent).
- What an allowance did not admit is returned once (`expire`), scored with the allowance's end; a replaced
  allowance's rest is returned when the new one arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nexus.core.rates import ALLOWANCE_SECONDS, Correction, GrantReply, ScopeAsk

__all__ = ["MAX_SHARE", "AllowanceBook", "Denied", "Need", "Ticket", "format_reset"]

MAX_SHARE = 0.25  # an allowance is at most this share of the limit (so several replicas share a busy key)
Need = tuple[str, str, int, int]  # (kind, scope, limit, amount)
_HEADER_NAMES = tuple(
    (kind, (b"x-ratelimit-limit-" + word, b"x-ratelimit-remaining-" + word, b"x-ratelimit-reset-" + word))
    for kind, word in (("rpm", b"requests"), ("tpm", b"tokens"))
)


@dataclass(slots=True)
class _Allowance:
    left: int = 0
    usable_until: float = 0.0  # local monotonic
    end_ms: int = 0  # the Redis time the grant is scored with (corrections go there)
    counted: int = 0  # the scope's window total as of the last grant (this allowance included)
    reset_at: float = 0.0  # local monotonic: when the window's oldest entry leaves, as of the last grant
    denied_until: float = 0.0
    used_recently: int = 0  # admitted from allowances of this scope in the current lifetime (sizing)
    used_before: int = 0  # ... and in the previous one
    lifetime_start: float = 0.0


@dataclass(frozen=True, slots=True)
class Ticket:
    """What one admitted request took: per (kind, scope), (amount, grant end ms)."""

    taken: tuple[tuple[str, str, int, int], ...] = ()
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Denied:
    kind: str
    scope: str
    limit: int
    retry_after: float  # seconds
    headers: tuple[tuple[bytes, bytes], ...] = ()


def format_reset(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: `20ms`, `1.5s`, `1m30s`."""
    return _reset(seconds).decode()


def _reset(seconds: float) -> bytes:
    # bytes %-formatting: the cheapest way to these texts, on every response of a limited key
    if seconds < 1:
        return b"%dms" % max(0, round(seconds * 1000))
    if seconds < 60:
        return b"%.3gs" % seconds
    return b"%dm%ds" % divmod(round(seconds), 60)


@dataclass(slots=True)
class AllowanceBook:
    allowances: dict[tuple[str, str], _Allowance] = field(default_factory=dict)
    corrections: list[Correction] = field(default_factory=list)

    def _get(self, kind: str, scope: str) -> _Allowance:
        a = self.allowances.get((kind, scope))
        if a is None:
            a = self.allowances[(kind, scope)] = _Allowance()
        return a

    def take(self, needs: Sequence[Need], now: float) -> Ticket | Denied | list[ScopeAsk]:
        """Admit locally (a Ticket), refuse locally (Denied), or the asks Redis must grant first. On every request
        of a limited key, so one pass finds the allowances and the admitted path reuses them for the headers."""
        allowances = self.allowances
        found: list[_Allowance] = []
        asks: list[ScopeAsk] | None = None
        for kind, scope, limit, amount in needs:
            a = allowances.get((kind, scope))
            if a is None:
                a = allowances[(kind, scope)] = _Allowance()
            if amount > limit:
                return Denied(kind, scope, limit, 60.0, self.headers(needs, now))
            if a.denied_until > now:
                return Denied(kind, scope, limit, a.denied_until - now, self.headers(needs, now))
            if a.usable_until <= now or a.left < amount:
                if asks is None:
                    asks = []
                asks.append(ScopeAsk(kind, scope, limit, self._want(a, limit, amount, now), amount))
            found.append(a)
        if asks:
            return asks
        taken = []
        for (kind, scope, _limit, amount), a in zip(needs, found, strict=True):
            a.left -= amount
            if now - a.lifetime_start >= ALLOWANCE_SECONDS:
                self._new_lifetime(a, now)
            a.used_recently += amount
            taken.append((kind, scope, amount, a.end_ms))
        return Ticket(tuple(taken), _headers(needs, found, now))

    @staticmethod
    def _new_lifetime(a: _Allowance, now: float) -> None:
        a.used_before = a.used_recently if now - a.lifetime_start < 2 * ALLOWANCE_SECONDS else 0
        a.used_recently = 0
        a.lifetime_start = now

    @staticmethod
    def _want(a: _Allowance, limit: int, amount: int, now: float) -> int:
        recent = max(a.used_recently, a.used_before) if now - a.lifetime_start < 2 * ALLOWANCE_SECONDS else 0
        return max(amount, min(recent + amount, max(1, int(limit * MAX_SHARE))))

    def granted(self, asks: Sequence[ScopeAsk], reply: GrantReply, sent: float) -> None:
        """Record a grant of `asks` whose request was sent at local time `sent`."""
        for ask, got, counted, reset_ms in zip(asks, reply.granted, reply.counted, reply.reset_ms, strict=True):
            a = self._get(ask.kind, ask.scope)
            if a.left > 0 and a.end_ms:
                self.corrections.append(Correction(ask.kind, ask.scope, a.end_ms, -a.left))
            a.left = got
            a.usable_until = sent + ALLOWANCE_SECONDS
            a.end_ms = reply.end_ms
            a.counted = counted
            a.reset_at = sent + reset_ms / 1000.0
            a.denied_until = 0.0

    def refused(self, asks: Sequence[ScopeAsk], reply: GrantReply, sent: float) -> Denied:
        ask = asks[reply.refused]
        a = self._get(ask.kind, ask.scope)
        wait = min(reply.wait_ms / 1000.0, ALLOWANCE_SECONDS)
        a.denied_until = sent + wait
        a.counted = reply.counted[0]
        a.reset_at = sent + reply.wait_ms / 1000.0
        return Denied(ask.kind, ask.scope, ask.limit, max(reply.wait_ms / 1000.0, 0.001))

    def settle(self, ticket: Ticket, real_tokens: int) -> None:
        """The request is over: correct each TPM grant it took from by what it really used."""
        for kind, scope, amount, end_ms in ticket.taken:
            if kind == "tpm" and real_tokens != amount:
                delta = real_tokens - amount
                # fewer tokens: give them back where they were counted; more: count the excess from now on
                self.corrections.append(Correction(kind, scope, end_ms if delta < 0 else 0, delta))

    def expire(self, now: float) -> None:
        """Return what allowances past their lifetime did not admit."""
        for (kind, scope), a in self.allowances.items():
            if a.usable_until <= now and a.left > 0:
                self.corrections.append(Correction(kind, scope, a.end_ms, -a.left))
                a.left = 0

    def release_all(self) -> None:
        """Return every allowance (the node stops)."""
        self.expire(float("inf"))

    def drain(self) -> list[Correction]:
        """The pending corrections, merged per (kind, scope, score): requests settled against one grant become
        one entry, so the window's zset grows by grants, never by requests."""
        merged: dict[tuple[str, str, int], int] = {}
        for c in self.corrections:
            key = (c.kind, c.scope, c.end_ms)
            merged[key] = merged.get(key, 0) + c.delta
        self.corrections = []
        return [Correction(k, s, e, d) for (k, s, e), d in merged.items() if d]

    def forget(self, live: set[tuple[str, str]]) -> None:
        """Drop state of scopes no tenant limits any more (returning what they hold)."""
        for key in [k for k in self.allowances if k not in live]:
            a = self.allowances.pop(key)
            if a.left > 0:
                self.corrections.append(Correction(key[0], key[1], a.end_ms, -a.left))

    def headers(self, needs: Sequence[Need], now: float) -> tuple[tuple[bytes, bytes], ...]:
        """OpenAI's rate headers: per kind, the scope with the least left."""
        return _headers(needs, [self.allowances.get((kind, scope)) for kind, scope, _, _ in needs], now)


def _headers(needs: Sequence[Need], found: Sequence[_Allowance | None], now: float) -> tuple[tuple[bytes, bytes], ...]:
    """The rate headers of `needs`, whose allowances (None: none yet) are `found`, in order. On every response
    of a limited key, so written for speed: one pass, bytes formatting, no intermediate objects."""
    best: dict[str, tuple[int, int, float]] = {}  # kind -> (remaining, limit, reset seconds)
    for (kind, _scope, limit, _amount), a in zip(needs, found, strict=True):
        if a is None:
            view = (limit, limit, 0.0)
        else:
            held = a.left if a.usable_until > now else 0
            view = (max(0, min(limit, limit - a.counted + held)), limit, max(0.0, a.reset_at - now))
        b = best.get(kind)
        if b is None or view[0] < b[0]:
            best[kind] = view
    out: list[tuple[bytes, bytes]] = []
    for kind, (limit_name, remaining_name, reset_name) in _HEADER_NAMES:
        b = best.get(kind)
        if b is not None:
            out += ((limit_name, b"%d" % b[1]), (remaining_name, b"%d" % b[0]), (reset_name, _reset(b[2])))
    return tuple(out)
