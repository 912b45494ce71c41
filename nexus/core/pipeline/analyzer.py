"""RequestAnalyzer: resolve aliases, then keep only backends that can serve the request at all.

Aliases resolve for at most `MAX_ALIAS_HOPS` hops (a->b->c->d resolves; a fourth hop is an error).
Config loading refuses cycles and longer chains already; the check here guards snapshots built from
anything else. Exclusions, one reason per backend, first that applies: unusable on this process (its API key
variable is unset: `Backend.unusable`), unhealthy (unless this router
node's breakers saw it answer since, or its trial is due: `intent.usable_unhealthy`), a request feature the
model on that backend lacks (vision, tools, JSON mode or schema, `n > 1`, logprobs, text completions: the
capability check of nexus/core/capabilities.py, never a feature silently dropped), context length too small
for the estimated input plus `max_tokens`.
"""

from __future__ import annotations

from nexus.core.aliases import MAX_ALIAS_HOPS
from nexus.core.aliases import follow as follow_alias
from nexus.core.capabilities import features, rejection
from nexus.core.model import Backend, HealthState
from nexus.core.pipeline.intent import RoutingIntent
from nexus.core.snapshot import Snapshot

__all__ = ["NAME", "reconcile"]

NAME = "RequestAnalyzer"


def _resolve(intent: RoutingIntent, snapshot: Snapshot) -> bool:
    chain = follow_alias(snapshot.aliases, intent.requested_model)
    if chain.too_long:  # judged first: a long chain that also cycles is reported as too long
        intent.error = (
            f"alias chain {' -> '.join(chain.names[: MAX_ALIAS_HOPS + 2])} exceeds {MAX_ALIAS_HOPS} hops; "
            f"point routing.aliases.{intent.requested_model} closer to the model"
        )
        return False
    if chain.cycle:
        intent.error = f"alias cycle {' -> '.join(chain.names)}; remove one of these aliases"
        return False
    intent.resolved_model = chain.names[-1]
    return True


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    if not _resolve(intent, snapshot):
        return
    model = intent.resolved_model
    serving = snapshot.by_model.get(model)
    if not serving:
        return
    intent.model_known = True
    intent.candidates = list(serving)
    req = intent.requirements
    need = req.input_tokens + (req.max_output_tokens or 0)
    facts = snapshot.model_facts[model]
    wanted = features(req)
    if not (wanted & facts.lacks_any) and (facts.min_context is None or need <= facts.min_context):
        # Every backend has what the request needs: only health can exclude.
        checked: tuple[Backend, ...] = facts.unusable + facts.unhealthy if facts.unusable else facts.unhealthy
    else:
        checked = serving
    bad: list[tuple[Backend, str, str]] = []
    for b in checked:
        spec = b.models[model]
        if b.unusable is not None:
            bad.append((b, b.unusable, f"export the variable on every Nexus process, then restart; {b.name} "
                        "stays configured meanwhile"))
            continue
        unhealthy = b.health is HealthState.UNHEALTHY
        if unhealthy and b.name not in intent.usable_unhealthy:
            bad.append((b, "backend is unhealthy (failing health checks)",
                        f"check backend {b.name}; it is re-admitted after its health checks recover"))
            continue
        if unhealthy:
            intent.warnings.append(
                f"{b.name} fails its health checks, but this router node saw it answer since or is trying it "
                "again (circuit breaker); it stays a candidate"
            )
        if (missing := rejection(wanted & spec.lacks, model)) is not None:
            bad.append((b, *missing))
        elif spec.context_length is not None and need > spec.context_length:
            bad.append((b, f"request needs about {need} tokens; context length is {spec.context_length}",
                        "shorten the conversation or lower max_tokens, or use a model with a longer context"))
    if bad:
        intent.exclude_each(bad, NAME)
