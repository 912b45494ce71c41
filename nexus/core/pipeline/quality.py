"""QualityReconciler: exclude backends that fail too often; mark slow ones for the scheduler.

A backend with at least `quality.min_requests` requests in the last hour and an error rate at or
above `quality.error_rate_threshold` is excluded. One whose 1h average time to first byte exceeds
`quality.ttft_penalty_threshold_ms` stays but is marked slow. Backends without history pass.
Both sets are computed once per snapshot (`Snapshot.failing`, `Snapshot.slow`). Backends the calling
router node just saw fail several times in a row (`intent.failing_here`, passive health) are demoted: the
scheduler tries them last, so traffic moves away at once while they stay available if nothing else is.
"""

from __future__ import annotations

from nexus.core.pipeline.intent import RoutingIntent
from nexus.core.snapshot import Snapshot

__all__ = ["NAME", "reconcile"]

NAME = "QualityReconciler"


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    intent.slow = snapshot.slow
    if intent.failing_here:
        intent.demoted = intent.failing_here
    failing = snapshot.failing
    if not failing:
        return
    out = [b for b in intent.candidates if b.name in failing]
    if not out:
        return
    threshold = snapshot.quality_error_threshold
    intent.exclude_each(
        (
            (
                b,
                f"error rate over the last hour is {b.quality.error_rate_1h:.0%}, at or above the "  # type: ignore[union-attr]
                f"threshold {threshold:.0%}",
                "check the backend's logs; it is re-admitted once its error rate falls below "
                "quality.error_rate_threshold",
            )
            for b in out
        ),
        NAME,
    )
