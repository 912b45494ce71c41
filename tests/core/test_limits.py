"""Desired state is bounded (issue 12, finding 6): a 20,014-backend import was accepted and then took every
replica seconds per rebuild. Each limit refuses one past it, naming the field; the admin API says 422."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nexus.core.config import LIMITS, BackendConfig, DesiredConfig, RoutingConfig


def backends(n: int, models: int = 1) -> list[dict]:
    return [{"name": f"b{i}", "url": "http://127.0.0.1:9", "models": [f"m{j}" for j in range(models)]}
            for i in range(n)]


@pytest.mark.parametrize(
    ("build", "says"),
    [
        pytest.param(lambda: DesiredConfig.model_validate({"backends": backends(LIMITS.backends + 1)}),
                     f"at most {LIMITS.backends} items", id="backends"),
        pytest.param(lambda: BackendConfig.model_validate(backends(1, LIMITS.models_per_backend + 1)[0]),
                     f"at most {LIMITS.models_per_backend} items", id="models-per-backend"),
        pytest.param(lambda: DesiredConfig.model_validate({"backends": backends(101, 1000)}),
                     f"at most {LIMITS.models_total} are allowed", id="models-total"),
        pytest.param(lambda: RoutingConfig.model_validate(
            {"policies": [{"model_pattern": f"m{i}"} for i in range(LIMITS.policies + 1)]}),
                     f"at most {LIMITS.policies} items", id="policies"),
        pytest.param(lambda: RoutingConfig.model_validate(
            {"aliases": {f"a{i}": "m" for i in range(LIMITS.aliases + 1)}}), "at most", id="aliases"),
        pytest.param(lambda: RoutingConfig.model_validate(
            {"fallbacks": {"m": [f"f{i}" for i in range(LIMITS.fallback_chain + 1)]}}),
                     f"at most {LIMITS.fallback_chain} are allowed", id="fallback-chain"),
        pytest.param(lambda: RoutingConfig.model_validate({"aliases": {"a" * (LIMITS.name_length + 1): "m"}}),
                     f"at most {LIMITS.name_length} characters", id="name-length"),
        pytest.param(lambda: BackendConfig.model_validate(
            {"name": "b", "url": "http://h:1", "models": ["x" * (LIMITS.name_length + 1)]}),
                     f"at most {LIMITS.name_length} characters", id="model-name-length"),
    ],
)
def test_each_bound_refuses_one_past_it(build, says):
    with pytest.raises(ValidationError, match=says):
        build()


def test_exactly_at_the_backend_limit_is_accepted():
    assert len(DesiredConfig.model_validate({"backends": backends(LIMITS.backends)}).backends) == LIMITS.backends
