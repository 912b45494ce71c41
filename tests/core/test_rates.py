"""Rate-limit allowances against the real Redis: the sliding-window bound across replicas, all-or-nothing grants
over a key and its team, TPM settled to the real usage, returns of what a node did not use."""

import asyncio
import time

import pytest

from nexus.core.allowance import AllowanceBook, Denied, Ticket, format_reset
from nexus.core.gateway_errors import RateLimited
from nexus.core.rates import Correction, ScopeAsk, grant, read_usage
from nexus.core.tenancy import Tenant
from nexus.router_node.rates import RateGate

WINDOW_MS = 2000


class RecordingBook(AllowanceBook):
    """Notes the local time of every admission (the moment the bound is about)."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def take(self, needs, now):  # type: ignore[override]
        out = super().take(needs, now)
        if isinstance(out, Ticket):
            self.times.append(now)
        return out


def tenant(rpm: int | None = None, tpm: int | None = None, team: tuple[int | None, int | None] | None = None):
    rates = [("key_000000000001", rpm, tpm)]
    if team is not None:
        rates.append(("team:t", *team))
    return Tenant(key_id="key_000000000001", team="t" if team else None, rates=tuple(rates))


def max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_admissions_in_every_sliding_window_never_exceed_the_limit_across_replicas(redis):
    # three replicas, 24 hammering clients, rpm 15 per 2 s window, for three windows
    gates = [RateGate(redis, f"n{i}", window_ms=WINDOW_MS) for i in range(3)]
    for g in gates:
        g.book = RecordingBook()
    t = tenant(rpm=15)
    stop = time.monotonic() + 3 * WINDOW_MS / 1000

    async def client(gate: RateGate) -> None:
        while time.monotonic() < stop:
            try:
                await gate.admit(t, 10)
            except RateLimited as exc:
                assert exc.status == 429 and int(exc.headers["Retry-After"]) >= 1
                await asyncio.sleep(0.01)
            else:
                await asyncio.sleep(0)

    async def upkeep() -> None:
        while time.monotonic() < stop:
            for g in gates:
                await g.maintain()
            await asyncio.sleep(0.05)

    await asyncio.gather(upkeep(), *(client(gates[i % 3]) for i in range(24)))
    times = [x for g in gates for x in g.book.times]
    assert max_in_any_window(times, WINDOW_MS / 1000) <= 15
    assert len(times) >= 30  # the limit is used, not starved: at least two windows' worth went through


async def test_a_grant_over_a_key_and_its_team_is_all_or_nothing(redis):
    gate = RateGate(redis, "n1", window_ms=WINDOW_MS)
    t = tenant(rpm=100, team=(2, None))
    await gate.admit(t, 1)
    await gate.admit(t, 1)
    key_before = await read_usage(redis, "rpm", "key_000000000001", WINDOW_MS)
    with pytest.raises(RateLimited) as info:
        await gate.admit(t, 1)
    assert "team t" in info.value.message and info.value.type_ == "requests"
    assert info.value.headers["x-ratelimit-limit-requests"] == "2"
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    # the refusal took nothing under the key either
    assert await read_usage(redis, "rpm", "team:t", WINDOW_MS) == 2
    assert await read_usage(redis, "rpm", "key_000000000001", WINDOW_MS) == key_before


async def test_tpm_is_settled_to_the_real_usage_and_unused_allowance_goes_back(redis):
    gate = RateGate(redis, "n1", window_ms=WINDOW_MS)
    t = tenant(tpm=1000)
    ticket = await gate.admit(t, 400)  # the estimate (prompt + max_tokens)
    assert dict(ticket.headers)[b"x-ratelimit-limit-tokens"] == b"1000"
    gate.settle(ticket, 100)  # it used 100
    gate.book.release_all()
    await gate.maintain()
    assert await read_usage(redis, "tpm", "key_000000000001", WINDOW_MS) == 100
    # more than estimated: the excess counts from now on
    ticket = await gate.admit(t, 100)
    gate.settle(ticket, 250)
    gate.book.release_all()
    await gate.maintain()
    assert await read_usage(redis, "tpm", "key_000000000001", WINDOW_MS) == 350


async def test_a_refusal_says_when_room_appears_and_is_then_answered_locally(redis):
    asks = [ScopeAsk("rpm", "key_a", 3, 3, 3)]
    first = await grant(redis, "n1", 1, asks, window_ms=WINDOW_MS)
    assert first.ok and first.granted == (3,) and first.counted == (3,)
    refused = await grant(redis, "n2", 1, [ScopeAsk("rpm", "key_a", 3, 1, 1)], window_ms=WINDOW_MS)
    assert not refused.ok and 0 < refused.wait_ms <= WINDOW_MS + 1000
    book = AllowanceBook()
    denied = book.refused([ScopeAsk("rpm", "key_a", 3, 1, 1)], refused, sent=100.0)
    assert denied.retry_after > 0
    again = book.take([("rpm", "key_a", 3, 1)], 100.1)
    assert isinstance(again, Denied)  # no second ask while the refusal holds
    assert isinstance(book.take([("rpm", "key_a", 3, 1)], 102.0), list)  # past it: ask again


def test_a_request_larger_than_the_limit_is_refused_without_asking():
    assert isinstance(AllowanceBook().take([("tpm", "k", 100, 101)], 0.0), Denied)


@pytest.mark.parametrize(("seconds", "text"), [(0.02, "20ms"), (1.5, "1.5s"), (90, "1m30s"), (0, "0ms")])
def test_reset_durations_read_like_openais(seconds, text):
    assert format_reset(seconds) == text


def test_corrections_of_one_grant_are_sent_as_one_entry():
    book = AllowanceBook()
    ticket = Ticket((("tpm", "k", 10, 500),))
    for _ in range(100):
        book.settle(ticket, 4)
    book.settle(Ticket((("tpm", "k", 10, 700),)), 12)
    assert sorted(book.drain(), key=lambda c: c.end_ms) == [
        Correction("tpm", "k", 0, 2), Correction("tpm", "k", 500, -600)]
    assert book.drain() == []
