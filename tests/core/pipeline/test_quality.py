import pytest

from nexus.core.model import QualityStats
from nexus.core.pipeline import Reject, Route
from tests.core.pipeline.helpers import backend, excluded_by, run, snapshot

NAME = "QualityReconciler"


@pytest.mark.parametrize(
    ("error_rate", "requests", "excluded"),
    [
        pytest.param(0.49, 100, False, id="below-threshold"),
        pytest.param(0.5, 100, True, id="exactly-threshold"),
        pytest.param(0.9, 100, True, id="above-threshold"),
        pytest.param(0.9, 4, False, id="too-few-requests"),
    ],
)
def test_error_rate_threshold(error_rate, requests, excluded):
    snap = snapshot([backend("flaky"), backend("steady")],
                    quality={"flaky": QualityStats(error_rate_1h=error_rate, requests_1h=requests)})
    decision = run(snap)
    assert (excluded_by(decision, NAME) == {"flaky"}) is excluded


def test_backends_without_history_pass():
    decision = run(snapshot([backend("new")]))
    assert isinstance(decision, Route)


def test_only_failing_backends_rejects():
    snap = snapshot([backend("a")], quality={"a": QualityStats(error_rate_1h=1.0, requests_1h=10)})
    decision = run(snap)
    assert isinstance(decision, Reject)
    assert "error_rate_threshold" in decision.reasons[0].suggested_action


def test_slow_time_to_first_token_is_penalised_not_excluded():
    slow = QualityStats(avg_ttfb_ms_1h=5000.0, requests_1h=100)
    fast = QualityStats(avg_ttfb_ms_1h=100.0, requests_1h=100)
    # "a-slow" would win the name tie-break; the penalty must put it second
    snap = snapshot([backend("a-slow"), backend("b-fast")], quality={"a-slow": slow, "b-fast": fast})
    decision = run(snap)
    assert decision.backend.name == "b-fast"
    assert [b.name for b in decision.alternatives] == ["a-slow"]
    assert decision.reasons == ()
