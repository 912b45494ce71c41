"""A configured warm-up: probe failures right after a backend first appears count as loading."""

import pytest

from nexus.core.model import HealthState
from nexus.worker.health import HealthPolicy, ProbeResult, ProbeStatus, next_health, warming_up

POLICY = HealthPolicy(failure_threshold=1, recovery_threshold=1, stale_after=100.0)
FAILED = ProbeResult(ProbeStatus.FAILED, error="connection refused")


@pytest.mark.parametrize(
    ("warmup", "elapsed", "state"),
    [
        pytest.param(0.0, 0.0, HealthState.UNHEALTHY, id="no-warmup"),
        pytest.param(30.0, 5.0, HealthState.LOADING, id="inside-warmup"),
        pytest.param(30.0, 30.0, HealthState.UNHEALTHY, id="warmup-over"),
    ],
)
def test_failures_inside_the_warmup_are_loading(warmup, elapsed, state):
    first = next_health(None, FAILED, POLICY, 1000.0, warming_up=warming_up(None, warmup, 1000.0))
    assert first.first_seen == 1000.0
    now = 1000.0 + elapsed
    later = next_health(first, FAILED, POLICY, now, warming_up=warming_up(first, warmup, now))
    assert later.state is state
    assert later.first_seen == 1000.0  # kept from the first probe
