"""Default prices of common cloud models, USD per 1M tokens (input, output).

Used when a backend's model entry declares no price. Matching is by exact name first, then by the
longest known prefix, so dated variants ("gpt-4o-2024-08-06") find their family's price. Local backend
types always cost 0 whatever this table says. Prices change: operators override them per model in
`nexus.toml` (`input_usd_per_1m`, `output_usd_per_1m`).
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["DEFAULT_PRICES", "default_price"]

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
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
