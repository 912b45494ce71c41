"""nexus.core.fleet.lifecycle: request rates from counter samples, pre-warm recommendations, marks decoding."""

from __future__ import annotations

import orjson

from nexus.core.fleet.lifecycle import MarkState, decode_marks, rate_per_minute, recommend


def test_rates_come_from_counter_differences_inside_the_window_and_survive_a_period_reset():
    assert rate_per_minute([(0, 10), (60, 40)], 60, 900) == 30.0
    assert rate_per_minute([(0, 10), (30, 40), (60, 5)], 60, 900) == 35.0  # new period: the counter restarts
    assert rate_per_minute([(0, 10), (1000, 70), (1060, 100)], 1060, 100) == 30.0  # the old sample is outside
    assert rate_per_minute([(0, 10)], 0, 900) == 0.0


def test_recommendations_load_busy_unloaded_models_on_the_least_loaded_installed_backend():
    rates = {"hot": 12.0, "warm": 2.0, "cold": 0.2, "loaded": 50.0, "nowhere": 9.0}
    installed = {"a": ["hot", "warm", "loaded"], "b": ["hot", "cold"]}
    loaded = {"a": ["loaded"], "b": []}
    recs = recommend(rates, installed, loaded, 1.0, 10)
    assert [(r.model, r.backend) for r in recs] == [("hot", "b"), ("warm", "a")]
    assert "12.00 requests/min" in recs[0].reason and "threshold 1" in recs[0].reason
    assert len(recommend(rates, installed, loaded, 1.0, 1)) == 1


def test_malformed_marks_are_skipped_and_good_ones_kept():
    good = orjson.dumps({"m": {"state": "loading", "op": "x", "until": 5}})
    marks = decode_marks({b"a": good, b"b": b"not json", b"c": orjson.dumps({"m": {"state": "weird"}})})
    assert list(marks) == ["a"] and marks["a"]["m"].state is MarkState.LOADING
