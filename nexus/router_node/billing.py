"""What a request costs: the price of its tokens, and the tokens to bill when the backend reported none.

Prices per 1M tokens come from the snapshot (`Snapshot.price`; local backends 0). A backend that sent no
valid usage is billed on the estimate: the prompt estimate, and the answer's text length (about
`CHARS_PER_TOKEN` characters a token), else `max_tokens`, else the default output estimate
(`Requirements.output_estimate`). A stream cut off before its usage is billed for the prompt plus the
events delivered (about one token each), not the whole estimate.
"""

from __future__ import annotations

from nexus.core.model import Backend
from nexus.core.pipeline import Requirements, Route
from nexus.core.pipeline.requirements import CHARS_PER_TOKEN
from nexus.core.snapshot import Snapshot
from nexus.core.usage import Usage
from nexus.router_node.upstream import Exchange

__all__ = ["cost", "estimated_cost", "estimated_usage"]


def cost(snap: Snapshot, backend: Backend, model: str, usage: Usage) -> float:
    pin, pout = snap.price(backend.name, model)
    return (usage.prompt_tokens * pin + usage.completion_tokens * pout) / 1_000_000.0


def estimated_cost(decision: Route, backend: Backend, snap: Snapshot, req: Requirements) -> float:
    """The estimate shown for `backend` (X-Nexus-Cost-Estimated): the decision's own for its first choice."""
    if backend.name == decision.backend.name:
        return decision.cost_estimate
    return cost(snap, backend, decision.model, Usage(req.input_tokens, req.output_estimate))


def estimated_usage(req: Requirements, ex: Exchange) -> Usage:
    """What to bill an answer whose backend reported no valid usage."""
    if ex.status != 200:
        return Usage(req.input_tokens, 0)
    out = -(-ex.completion_chars // CHARS_PER_TOKEN) if ex.completion_chars else req.output_estimate
    return Usage(req.input_tokens, out)
