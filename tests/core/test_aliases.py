"""The one alias walk (config checks, the RequestAnalyzer and /v1/models share it) and the budget-status
ranking."""

from __future__ import annotations

import pytest

from nexus.core.aliases import MAX_ALIAS_HOPS, follow
from nexus.core.model import BudgetStatus


@pytest.mark.parametrize(
    ("aliases", "name", "names", "cycle", "target"),
    [
        pytest.param({}, "m", ("m",), False, "m", id="not-an-alias"),
        pytest.param({"a": "b", "b": "c", "c": "m"}, "a", ("a", "b", "c", "m"), False, "m", id="three-hops"),
        pytest.param({"a": "b", "b": "c", "c": "d", "d": "m"}, "a", ("a", "b", "c", "d", "m"), False, None,
                     id="four-hops"),
        pytest.param({"a": "b", "b": "a"}, "a", ("a", "b", "a"), True, None, id="cycle"),
        pytest.param({"a": "a"}, "a", ("a", "a"), True, None, id="self-cycle"),
        pytest.param({"x": "a", "a": "b", "b": "a"}, "x", ("x", "a", "b", "a"), True, None, id="cycle-after-a-hop"),
    ],
)
def test_follow(aliases: dict[str, str], name: str, names: tuple[str, ...], cycle: bool, target: str | None) -> None:
    chain = follow(aliases, name)
    assert (chain.names, chain.cycle, chain.target) == (names, cycle, target)
    assert chain.too_long == (len(names) - 1 > MAX_ALIAS_HOPS)


def test_budget_status_severity_orders_the_statuses() -> None:
    ranked = sorted(BudgetStatus, key=lambda s: s.severity)
    assert ranked == [BudgetStatus.NORMAL, BudgetStatus.SOFT_LIMIT, BudgetStatus.HARD_LIMIT]
    assert [s.severity for s in ranked] == [0, 1, 2]  # the nexus_budget_status metric's values
