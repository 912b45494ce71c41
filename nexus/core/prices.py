"""Default prices of common cloud models, USD per 1M tokens (input, output).

Each backend type declares its vendor's prices (nexus/core/adapters/registry.py); this module gathers them
into one table, used for any cloud backend's model entry that declares no price (a `generic` proxy serving
`gpt-4o` is billed gpt-4o's price). Matching is by exact name first, then by the
longest known prefix, so dated variants ("gpt-4o-2024-08-06") find their family's price. Local backend
types always cost 0 whatever this table says. Prices change: operators override them per model in
`nexus.toml` (`input_usd_per_1m`, `output_usd_per_1m`).
"""

from __future__ import annotations

from functools import lru_cache

from nexus.core.adapters.registry import REGISTRY

__all__ = ["DEFAULT_PRICES", "default_price"]

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    model: price for kind in REGISTRY.values() for model, price in kind.prices.items()
}

_BY_LENGTH = sorted(DEFAULT_PRICES, key=len, reverse=True)


@lru_cache(maxsize=4096)  # snapshot builds ask for every cloud model of every backend
def default_price(model: str) -> tuple[float, float]:
    """(input, output) USD per 1M tokens for a cloud model; (0, 0) when unknown."""
    exact = DEFAULT_PRICES.get(model)
    if exact is not None:
        return exact
    for known in _BY_LENGTH:
        if model.startswith(known):
            return DEFAULT_PRICES[known]
    return (0.0, 0.0)
